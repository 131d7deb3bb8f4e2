"""Sample audits: the maths against brute force and known answers, then the stage and CLI end to end.

One small domain network (1024 Fashion-MNIST images, one epoch) is trained for the module; the stage
audits tiny sets against a 500-image train bank.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rgm_ray.audit import (AUDIT_JSON, CLASS_BARS_PNG, TABLE_MD, AuditConfig, AuditSpec, audit_sets,
                           binomial_ci, birthday_support_estimate, birthday_test, bootstrap_ci, class_histogram,
                           density_coverage, duplicate_rate, is_complete, kl_distance, near_copy_fraction,
                           nearest_neighbours, neighbours_file, nn_histogram_file, pixel_vectors,
                           smoothed_histogram, tv_distance)
from rgm_ray.cli.main import main
from rgm_ray.store import COPIES, LOG_WEIGHT, SampleSetWriter, export_dataset, make_table
from rgm_ray.tracking import NullTracker


class RecordingTracker(NullTracker):
    """What a stage would log to MLflow, kept in memory (a real MLflow run costs seconds to open)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}
        self.artifacts: list[str] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append(str(path))


# --- the maths -------------------------------------------------------------------------------------

def test_nearest_neighbours_match_brute_force(rng):
    query = torch.from_numpy(rng.normal(size=(37, 6)).astype(np.float32))
    bank = torch.from_numpy(rng.normal(size=(53, 6)).astype(np.float32))
    distances, indices = nearest_neighbours(query, bank, 4, block=8, bank_block=7)  # blocks cross every edge
    brute = np.sqrt(((query.numpy()[:, None].astype(np.float64) - bank.numpy()[None]) ** 2).sum(-1))
    assert np.array_equal(indices, np.argsort(brute, axis=1)[:, :4])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :4], rtol=1e-5)


def test_an_exact_copy_is_at_distance_zero_not_the_matmul_rounding(fmnist_test):
    bank = pixel_vectors(fmnist_test.images[:300])
    distances, indices = nearest_neighbours(bank[[5, 250]], bank, 1, bank_block=64)
    assert distances[:, 0].tolist() == [0.0, 0.0] and indices[:, 0].tolist() == [5, 250]
    assert near_copy_fraction(np.array([0.0, 0.5, 1.0, 2.0]), 1.0) == 0.75
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(bank[:2], bank[:3], 4)


def test_class_histogram_and_distances():
    p = class_histogram(np.array([0, 0, 1, 3]), 4)
    assert p.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert tv_distance([1, 0], [0, 1]) == 1.0 and tv_distance(p, p) == 0.0
    assert tv_distance(p, [0.25] * 4) == pytest.approx(0.25)
    smoothed = smoothed_histogram(np.array([0, 0, 1, 3]), 4)  # Jeffreys: +0.5 per class
    np.testing.assert_allclose(smoothed, np.array([2.5, 1.5, 0.5, 1.5]) / 6)
    assert kl_distance(smoothed, smoothed) == 0.0
    assert kl_distance([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    with pytest.raises(ValueError, match="smooth"):
        kl_distance(p, smoothed)


def test_bootstrap_ci_is_seeded_and_covers_the_mean(rng):
    x = rng.normal(3.0, 1.0, size=400)
    lo, hi = bootstrap_ci(np.mean, x, seed=7, reps=300)
    assert bootstrap_ci(np.mean, x, seed=7, reps=300) == (lo, hi) != bootstrap_ci(np.mean, x, seed=8, reps=300)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)  # ~ the normal interval
    diff = bootstrap_ci(lambda a, b: a.mean() - b.mean(), x, x + 1.0, seed=0, reps=200)
    assert diff[1] < 0


def test_binomial_ci_is_clopper_pearson():
    assert binomial_ci(0, 10) == (0.0, pytest.approx(1 - 0.025 ** 0.1))
    assert binomial_ci(10, 10) == (pytest.approx(0.025 ** 0.1), 1.0)
    lo, hi = binomial_ci(5, 10)
    assert lo == pytest.approx(0.187086, abs=1e-5) and hi == pytest.approx(0.812914, abs=1e-5)


def test_birthday_support_estimate_inverts_the_duplicate_probability():
    assert birthday_support_estimate(0.5, 100) == pytest.approx(100 ** 2 / (2 * math.log(2)))
    for n in (50.0, 1e4):
        p = 1 - math.exp(-20 ** 2 / (2 * n))
        assert birthday_support_estimate(p, 20) == pytest.approx(n)
    assert birthday_support_estimate(0.0, 20) == math.inf and birthday_support_estimate(1.0, 20) == 0.0


def test_birthday_test_and_duplicate_rate_on_known_sets():
    distinct = torch.arange(60, dtype=torch.float32)[:, None] * 10.0  # 10 apart
    repeated = torch.cat([distinct[:30], distinct[:30]])  # every row twice
    assert duplicate_rate(distinct, 1.0) == 0.0 and duplicate_rate(repeated, 1.0) == 1.0
    none = birthday_test(distinct, 1.0, 20, 8, seed=0)
    assert none.duplicate_batches == 0
    assert none.to_json()["support"] is None and none.to_json()["support_ci"][1] is None  # JSON has no infinity
    one = birthday_test(torch.zeros(40, 3), 0.0, 10, 5, seed=0)
    assert one.dup_prob == 1.0 and one.to_json()["support"] == 0.0
    assert birthday_test(repeated, 1.0, 20, 8, seed=3) == birthday_test(repeated, 1.0, 20, 8, seed=3)
    with pytest.raises(ValueError, match="exceeds"):
        birthday_test(distinct, 1.0, 61, 1, seed=0)


def test_density_coverage_definitions(rng):
    real = torch.from_numpy(rng.normal(size=(600, 3)).astype(np.float32))
    same = torch.from_numpy(rng.normal(size=(600, 3)).astype(np.float32))
    density, coverage = density_coverage(real, same, 5)
    assert density == pytest.approx(1.0, abs=0.15) and coverage > 0.9
    assert density_coverage(real, same + 100.0, 5) == (0.0, 0.0)
    small_real, small_fake = real[:40].double().numpy(), same[:25].double().numpy()
    d_rr = np.sqrt(((small_real[:, None] - small_real[None]) ** 2).sum(-1))
    radii = np.sort(d_rr, axis=1)[:, 3]  # 3rd nearest other real row (column 0 is the row itself)
    inside = np.sqrt(((small_fake[:, None] - small_real[None]) ** 2).sum(-1)) < radii[None]
    expected = (inside.sum() / (3 * 25), inside.any(0).mean())
    assert density_coverage(real[:40], same[:25], 3, block=7) == pytest.approx(expected)


# --- the stage ------------------------------------------------------------------------------------

CONFIG = AuditConfig(seed=1, bootstrap=40, birthday_batch=20, birthday_batches=10, train_bank=500, max_images=200,
                     figure_samples=4)




def _write_set(path, images, *, source, **extra):
    with SampleSetWriter(path, source=source) as writer:
        writer.write(make_table(np.arange(len(images)), images, None, source=source, extra=extra))
    return str(path)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, fm_train):
    """plain: 200 unseen train images; copies: 100 bank images stored once with copies=2 and a log_weight;
    repeat: one unseen image 200 times."""
    root = tmp_path_factory.mktemp("audit_sets")
    export_dataset(dataclasses.replace(fm_train, images=fm_train.images[20000:20200],
                                       labels=fm_train.labels[20000:20200]), root / "plain")
    copies = _write_set(root / "copies", fm_train.images[:100], source="test:copies",
                        **{COPIES: np.full(100, 2), LOG_WEIGHT: np.arange(100) / 10.0})
    repeat = _write_set(root / "repeat", np.repeat(fm_train.images[30000:30001], 200, axis=0), source="test:repeat")
    return {"plain": str(root / "plain"), "copies": copies, "repeat": repeat}


@pytest.fixture(scope="module")
def audited(tmp_path_factory, sets, domain_ckpt):
    spec = AuditSpec(real="fashion-mnist", sets=sets, out=str(tmp_path_factory.mktemp("audit_out") / "audit"),
                     domain_checkpoint=str(domain_ckpt), config=CONFIG)
    return spec, audit_sets(spec)


def test_audit_finds_copies_duplicates_and_a_collapsed_set(audited, fm_train):
    spec, result = audited
    record = json.loads(open(f"{spec.out}/{AUDIT_JSON}").read())
    rows = {row["name"]: row for row in record["rows"]}
    assert list(rows) == ["reference", "plain", "copies", "repeat"]
    assert rows["reference"]["images"] == 200 and rows["copies"]["images"] == 200  # copies expanded
    q = CONFIG.threshold_quantile
    for space in ("pixel", "feature"):
        assert rows["copies"]["memorisation"][space]["near_copy_fraction"] == 1.0
        assert rows["copies"]["memorisation"][space]["nn_distance"]["mean"] == 0.0
        assert rows["reference"]["memorisation"][space]["near_copy_fraction"] == pytest.approx(q, abs=0.01)
        assert rows["plain"]["memorisation"][space]["near_copy_fraction"] < 0.3
        change = record["near_copy_change"]["copies"][space]
        assert change["raised"] and change["delta"] > 0.7
    assert record["near_copy_change"]["copies"]["baseline"] == "plain" and "plain" not in record["near_copy_change"]
    assert 0 < record["thresholds"]["pixel"] and 0 < record["thresholds"]["feature"]
    assert rows["copies"]["diversity"]["duplicate_rate"] == 1.0 and rows["repeat"]["diversity"]["duplicate_rate"] == 1.0
    assert rows["plain"]["diversity"]["duplicate_rate"] < 0.3
    birthday = rows["repeat"]["diversity"]["birthday"]
    assert birthday["dup_prob"] == 1.0 and birthday["support"] == 0.0 and birthday["support_ci"][1] < 20 ** 2
    assert rows["plain"]["diversity"]["birthday"]["dup_prob"] < birthday["dup_prob"]
    assert rows["repeat"]["diversity"]["coverage"] < 0.05 < rows["plain"]["diversity"]["coverage"]
    (only_class,) = np.flatnonzero(rows["repeat"]["class_balance"]["histogram"])  # one image, one class
    reference_share = rows["reference"]["class_balance"]["histogram"][only_class]
    assert rows["repeat"]["class_balance"]["tv"] == pytest.approx(1.0 - reference_share)
    assert rows["repeat"]["class_balance"]["tv"] > 0.3 > rows["plain"]["class_balance"]["tv"]
    assert rows["reference"]["class_balance"]["tv"] == 0.0
    for row in rows.values():
        balance = row["class_balance"]
        assert len(balance["histogram"]) == 10 and sum(balance["histogram"]) == pytest.approx(1.0)
        assert balance["tv_ci"][0] <= balance["tv_ci"][1] and math.isfinite(balance["kl"])
    assert result.rows["plain"]["class_tv"] == rows["plain"]["class_balance"]["tv"]
    assert result.metrics["copies/near_copy_pixel"] == 1.0 and "repeat/birthday_support" in result.metrics

    figure = record["figures"]["neighbours"]["copies"]
    assert figure["rows"] == [99, 98, 97, 96] and figure["order"].startswith("log_weight")
    assert [idx[0] for idx in figure["train_indices"]] == [99, 98, 97, 96]  # each sample's nearest is itself
    grid = np.asarray(Image.open(f"{spec.out}/{neighbours_file('copies')}"))
    assert grid.shape == (2 * (4 * 30 + 2), 2 * (4 * 30 + 2))  # 4 samples x (sample + 3 neighbours)
    for name in (CLASS_BARS_PNG, nn_histogram_file("pixel"), nn_histogram_file("feature")):
        assert Image.open(f"{spec.out}/{name}").format == "PNG" and f"{spec.out}/{name}" in result.files
    table = open(f"{spec.out}/{TABLE_MD}").read()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 5 and "copies vs plain" in table


def test_audit_is_deterministic_complete_and_tracked(audited, tmp_path):
    spec, result = audited
    assert is_complete(spec.out, spec) and not is_complete(tmp_path, spec)
    assert not is_complete(spec.out, dataclasses.replace(spec, config=dataclasses.replace(CONFIG, seed=2)))
    again = dataclasses.replace(spec, out=str(tmp_path / "again"))
    tracker = RecordingTracker()
    audit_sets(again, tracker=tracker)
    first, second = (json.loads(open(f"{s.out}/{AUDIT_JSON}").read()) for s in (spec, again))
    assert first == second
    assert tracker.metrics == result.metrics and tracker.metrics["repeat/duplicate_rate"] == 1.0
    assert {p.rsplit("/", 1)[1] for p in tracker.artifacts} == {p.rsplit("/", 1)[1] for p in result.files}


def test_cli_audit_json(sets, domain_ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["audit", "--real", "fashion-mnist", "--set", f"plain={sets['plain']}", "--set",
            f"repeat={sets['repeat']}", "--domain-checkpoint", str(domain_ckpt), "--out", str(out),
            "--bootstrap", "20", "--birthday-batch", "20", "--birthday-batches", "4", "--train-bank", "300",
            "--max-images", "100", "--compare", "plain=repeat", "--no-mlflow"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["rows"]) == {"reference", "plain", "repeat"} and (out / AUDIT_JSON).is_file()
    assert summary["repeat/duplicate_rate"] == 1.0 and summary["rows"]["repeat"]["duplicate_rate"] == 1.0
    record = json.loads((out / AUDIT_JSON).read_text())
    assert record["config"]["train_bank"] == 300 and record["rows"][0]["images"] == 100
    assert list(record["near_copy_change"]) == ["plain"] and record["near_copy_change"]["plain"]["baseline"] == "repeat"
    assert main(argv) == 0 and "audited 2 set(s)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--set", "bad"], "expected NAME=DIR"),
    (["--set", "reference=x"], "set name 'reference'"),
    (["--compare", "plain=nope"], "--compare plain=nope: name two different sets"),
    (["--compare", "plain"], "expected NAME=BASELINE"),
    (["--birthday-batch", "500"], "fewer than the birthday batch size 500"),
    (["--threshold-quantile", "1.5"], "threshold_quantile"),
])
def test_cli_refuses_bad_inputs_in_one_line(sets, domain_ckpt, tmp_path, capsys, extra, message):
    argv = ["audit", "--real", "fashion-mnist", "--set", f"plain={sets['plain']}", "--domain-checkpoint",
            str(domain_ckpt), "--out", str(tmp_path / "out"), "--max-images", "1000", "--no-mlflow", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / AUDIT_JSON).exists()


def test_cli_refuses_an_output_being_written(sets, domain_ckpt, tmp_path, capsys):
    import threading

    from rgm_ray.store.lock import output_lock

    out, held, release = tmp_path / "busy", threading.Event(), threading.Event()

    def hold() -> None:
        with output_lock(out, command="test-holder"):
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        assert main(["audit", "--real", "fashion-mnist", "--set", f"plain={sets['plain']}", "--domain-checkpoint",
                     str(domain_ckpt), "--out", str(out), "--no-mlflow"]) == 2
    finally:
        release.set()
        holder.join()
    assert "is being written by" in capsys.readouterr().err and not out.exists()
