"""Evaluation stage: torch-fidelity metrics on equal-size sets, the domain extractor, the CLI.

One small domain network (1024 Fashion-MNIST images, one epoch) is trained per module and shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from rgm_ray.cli import cmd_evaluate
from rgm_ray.evaluate import (DOMAIN_EXTRACTOR, KEY_FID, KEY_IS, KEY_KID, KEY_PRECISION, KEY_RECALL,
                              KEY_WEIGHTED_FID, KEY_WEIGHTED_FID_ESS, METRIC_KEYS, EvalConfig, EvalSet,
                              FidelityFeaturizer, domain_spec, evaluate,
                              fidelity_metrics, inception_spec, markdown_table, register_domain_extractor,
                              validate_sets, weighted_fid)
from rgm_ray.evaluate.features import (DOMAIN_FEATURES, DOMAIN_LOGITS, DomainFeatureExtractor,
                                       ImageArrayDataset)
from rgm_ray.evaluate.outputs import top_bottom_rows
from rgm_ray.evaluate.protocol import REFERENCE, draw_real_subsets, draw_subsets
from rgm_ray.evaluate.stage import EvaluateResult, EvaluateSpec, is_complete
from rgm_ray.evaluate.weighted_fid import weighted_statistics
from rgm_ray.weigh.transforms import effective_sample_size, self_normalize
from rgm_ray.models.checkpoint import load_checkpoint
from rgm_ray.models.resnet import preprocess
from rgm_ray.store import LOG_WEIGHT, COPIES, SampleSetWriter, export_dataset, make_table

KID_SUBSETS = 5  # torch-fidelity's 100 is needlessly slow for these small checks




@pytest.fixture(scope="module")
def featurizer(domain_ckpt):
    return FidelityFeaturizer(domain_spec(domain_ckpt))


def _no_network(monkeypatch):
    """Any download attempt (sockets, torch.hub) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(inception_module, "load_state_dict_from_url", refuse)


def _blur(images: np.ndarray) -> np.ndarray:
    return gaussian_filter(images.astype(np.float32), sigma=(0, 0, 1.0, 1.0)).round().astype(np.uint8)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


# --- feature extractors ------------------------------------------------------------------------------

def test_domain_extractor_registers_and_runs_offline(domain_ckpt, fmnist_test, monkeypatch):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    _no_network(monkeypatch)
    assert FEATURE_EXTRACTORS_REGISTRY[DOMAIN_EXTRACTOR] is DomainFeatureExtractor
    register_domain_extractor()  # idempotent
    extractor = create_feature_extractor(DOMAIN_EXTRACTOR, [DOMAIN_FEATURES, DOMAIN_LOGITS], cuda=False,
                                         feature_extractor_weights_path=str(domain_ckpt))
    x = torch.from_numpy(fmnist_test.images[:8])
    features, logits = extractor(x)
    model = load_checkpoint(domain_ckpt)
    with torch.no_grad():
        expected = model.features(preprocess(x))
    assert features.shape == (8, 64) and logits.shape == (8, 10)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(logits, model.head(expected))
    with pytest.raises(ValueError, match="shape"):
        extractor(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        extractor(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        extractor(x.float())


def test_image_dataset_replicates_grayscale_for_inception(fmnist_test):
    gray = ImageArrayDataset(fmnist_test.images[:3], rgb=True)[1]
    assert gray.dtype == torch.uint8 and gray.shape == (3, 28, 28)
    assert torch.equal(gray[0], gray[2]) and torch.equal(gray[0], torch.from_numpy(fmnist_test.images[1, 0]))
    assert ImageArrayDataset(fmnist_test.images[:3])[0].shape == (1, 28, 28)


def test_inception_needs_a_local_weights_file(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    _no_network(monkeypatch)
    with pytest.raises(ValueError, match="cannot be downloaded") as info:
        inception_spec(None)
    assert URL_INCEPTION_V3 in str(info.value) and "--inception-weights" in str(info.value)
    with pytest.raises(ValueError, match="no such file"):
        inception_spec(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        inception_spec(junk)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not torch-fidelity's Inception-V3 weights"):
        inception_spec(other)


def test_inception_runs_offline_from_a_local_file(tmp_path, fmnist_test, monkeypatch):
    """A random-init Inception weights file stands in for the real one (which cannot be fetched here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception_module

    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    with monkeypatch.context() as patch:
        patch.setattr(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        model = inception_module.FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "inception.pth"
    torch.save(model.state_dict(), weights)
    _no_network(monkeypatch)
    features = FidelityFeaturizer(inception_spec(weights), batch_size=4)(fmnist_test.images[:4])
    assert features.features.shape == (4, 2048) and features.logits.shape == (4, 1008)
    assert torch.isfinite(features.features).all()


# --- metrics ---------------------------------------------------------------------------------------

def test_feature_level_metrics_equal_calculate_metrics(featurizer, domain_ckpt, fm_train, fmnist_test, tmp_path,
                                                       monkeypatch):
    """Our per-run scoring is exactly torch-fidelity's calculate_metrics on the same images."""
    import torch_fidelity

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    _no_network(monkeypatch)
    generated, real = fm_train.images[:200], fmnist_test.images[:200]
    reference = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(generated), input2=ImageArrayDataset(real), feature_extractor=DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=str(domain_ckpt), isc=True, fid=True, kid=True, prc=True,
        kid_subsets=KID_SUBSETS, kid_subset_size=150, rng_seed=7, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True, batch_size=64)
    ours = fidelity_metrics(featurizer(generated), featurizer(real), rng_seed=7, kid_subset_size=150,
                            kid_subsets=KID_SUBSETS)
    assert ours[KEY_IS] == pytest.approx(reference[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-5)
    assert ours[KEY_FID] == pytest.approx(reference[torch_fidelity.KEY_METRIC_FID], rel=1e-4)
    assert ours[KEY_KID] == pytest.approx(reference[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-4, abs=1e-6)
    assert ours[KEY_PRECISION] == pytest.approx(reference[torch_fidelity.KEY_METRIC_PRECISION], abs=0.011)
    assert ours[KEY_RECALL] == pytest.approx(reference[torch_fidelity.KEY_METRIC_RECALL], abs=0.011)
    assert not (tmp_path / "torch_home").exists()  # no cache written, nothing downloaded


def test_real_scores_far_better_than_noise_and_blur(featurizer, fm_train, fmnist_test):
    real = EvalSet("real", fmnist_test.images[:1000])
    reference = EvalSet(REFERENCE, fm_train.images[:1000])
    sets = [EvalSet("noise", _noise(200)), EvalSet("blur", _blur(fm_train.images[2000:2200]))]
    evaluation = evaluate(real, reference, sets, featurizer,
                          EvalConfig(k=200, runs=2, seed=0, kid_subsets=KID_SUBSETS))
    ref, noise, blur = (evaluation.row(n).mean() for n in (REFERENCE, "noise", "blur"))
    for bad in (noise, blur):
        assert bad[KEY_FID] > 10 * ref[KEY_FID]
        assert bad[KEY_KID] > 0.01 and bad[KEY_KID] > 10 * abs(ref[KEY_KID])
        assert bad[KEY_RECALL] < ref[KEY_RECALL] - 0.3
    assert noise[KEY_FID] > blur[KEY_FID]
    assert all(len(row.runs) == 2 and set(row.keys) == set(METRIC_KEYS) for row in evaluation.rows)
    table = markdown_table(evaluation)
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:]] == [REFERENCE, "noise", "blur"]


def test_same_seed_gives_identical_metrics(featurizer, fm_train, fmnist_test):
    real = EvalSet("real", fmnist_test.images[:300])  # no reference pool: two disjoint k-subsets of real
    sets = [EvalSet("train", fm_train.images[:150])]
    config = EvalConfig(k=60, runs=2, seed=3, uniform_k=True, kid_subsets=KID_SUBSETS)
    first = evaluate(real, None, sets, featurizer, config).to_json()
    second = evaluate(real, None, sets, featurizer, config).to_json()
    assert first == second
    assert first["rows"][1]["runs"][0] != first["rows"][1]["runs"][1]  # runs use different subsets
    other = dataclasses.replace(config, seed=4)
    assert not np.array_equal(draw_subsets(sets[0], config)[0], draw_subsets(sets[0], other)[0])


def test_weighted_fid_reduces_to_fid_and_follows_the_weights():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    gen = torch.from_numpy(np.random.default_rng(0).normal(size=(400, 8)))
    real = torch.from_numpy(np.random.default_rng(1).normal(size=(400, 8)))
    plain = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real), False)
    assert weighted_fid(gen, np.full(400, -3.0), real) == pytest.approx(plain["frechet_inception_distance"], rel=1e-9)

    shifted = torch.cat([gen[:200], gen[200:] + 4.0])  # half good, half far off
    good_only = fid_statistics_to_metric(fid_features_to_statistics(shifted[:200]),
                                         fid_features_to_statistics(real), False)["frechet_inception_distance"]
    log_w = np.r_[np.zeros(200), np.full(200, -np.inf)]
    assert weighted_fid(shifted, log_w, real) == pytest.approx(good_only, rel=1e-9)
    assert weighted_fid(shifted, np.zeros(400), real) > 5 * good_only
    assert effective_sample_size(np.zeros(50)) == pytest.approx(50)
    assert effective_sample_size(np.r_[0.0, np.full(9, -np.inf)]) == pytest.approx(1)
    assert self_normalize(np.array([1000.0, 1000.0])) == pytest.approx([0.5, 0.5])
    for bad in (np.array([0.0, np.nan]), np.array([np.inf, 0.0]), np.full(3, -np.inf)):
        with pytest.raises(ValueError):
            self_normalize(bad)
    with pytest.raises(ValueError, match="two images"):
        weighted_statistics(gen[:3], np.array([0.0, -np.inf, -np.inf]))


# --- protocol: equal sizes, subsets, copies ----------------------------------------------------------

def _images(n: int, value: int = 0, shape=(1, 4, 4)) -> np.ndarray:
    return np.full((n, *shape), value, np.uint8)


def test_equal_size_is_enforced():
    real, reference = EvalSet("real", _images(100)), EvalSet(REFERENCE, _images(100))
    exact = EvalConfig(k=20)
    validate_sets(real, reference, [EvalSet("a", _images(20))], exact)
    with pytest.raises(ValueError, match="fewer than k=20"):
        validate_sets(real, reference, [EvalSet("a", _images(20)), EvalSet("b", _images(19))], exact)
    with pytest.raises(ValueError, match="fewer than k=20"):
        validate_sets(real, reference, [EvalSet("a", _images(19))], dataclasses.replace(exact, uniform_k=True))
    with pytest.raises(ValueError, match="--uniform-k"):
        validate_sets(real, reference, [EvalSet("a", _images(30))], exact)
    validate_sets(real, reference, [EvalSet("a", _images(30))], dataclasses.replace(exact, uniform_k=True))
    with pytest.raises(ValueError, match="real data"):
        validate_sets(EvalSet("real", _images(19)), reference, [], exact)
    with pytest.raises(ValueError, match="needs 40"):
        validate_sets(EvalSet("real", _images(39)), None, [], exact)  # real + disjoint reference subset
    with pytest.raises(ValueError, match="reference data"):
        validate_sets(real, EvalSet(REFERENCE, _images(10)), [], exact)
    with pytest.raises(ValueError, match="shape"):
        validate_sets(real, reference, [EvalSet("a", _images(20, shape=(3, 4, 4)))], exact)
    for names in (["reference"], ["real"], ["a/b"], ["a", "a"]):
        with pytest.raises(ValueError, match="set name|unique"):
            validate_sets(real, reference, [EvalSet(n, _images(20)) for n in names], exact)
    with pytest.raises(ValueError, match="--weighted-fid"):
        validate_sets(real, reference, [EvalSet("a", _images(20))], dataclasses.replace(exact, weighted_fid=True))
    with pytest.raises(ValueError, match="k must be at least"):
        EvalConfig(k=5)


def test_subsets_expand_copies_and_depend_on_names_not_positions():
    resampled = EvalSet("resampled", _images(4), copies=np.array([0, 6, 1, 3]))
    expanded = [1] * 6 + [2] + [3] * 3
    assert resampled.size == 10 and resampled.expanded_rows().tolist() == expanded
    for rows in draw_subsets(resampled, EvalConfig(k=10, runs=2)):
        assert sorted(rows.tolist()) == expanded

    pool = EvalSet("plain", _images(50))
    uniform = EvalConfig(k=10, runs=3, seed=1, uniform_k=True)
    runs = draw_subsets(pool, uniform)
    assert all(len(np.unique(rows)) == 10 for rows in runs)
    assert not np.array_equal(runs[0], runs[1])
    assert all(np.array_equal(a, b) for a, b in zip(runs, draw_subsets(EvalSet("plain", _images(50, 9)), uniform)))
    assert not np.array_equal(runs[0], draw_subsets(EvalSet("other", _images(50)), uniform)[0])

    real_rows, ref_rows = draw_real_subsets(EvalSet("real", _images(25)), None, uniform)
    for real, ref in zip(real_rows, ref_rows):
        assert len(real) == len(ref) == 10 and not set(real) & set(ref)
    for bad in (np.array([1, -1, 1, 1]), np.zeros(4, np.int64), np.ones(3, np.int64)):
        with pytest.raises(ValueError, match="copies"):
            EvalSet("x", _images(4), copies=bad)


def test_top_and_bottom_rows_by_weight():
    top, bottom = top_bottom_rows(np.array([0.5, -2.0, 3.0, 1.0]), n=2)
    assert top.tolist() == [2, 3] and bottom.tolist() == [1, 0]


# --- CLI ---------------------------------------------------------------------------------------------

def _run_cli(argv: list[str]) -> EvaluateResult:
    parser = argparse.ArgumentParser(prog="rgm")
    cmd_evaluate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def _write_set(path, images, *, source, **extra):
    with SampleSetWriter(path, source=source) as writer:
        writer.write(make_table(np.arange(len(images)), images, None, source=source, extra=extra))


def test_cli_end_to_end(domain_ckpt, fm_train, tmp_path, tracking_uri):
    import mlflow

    plain = tmp_path / "plain"
    export_dataset(dataclasses.replace(fm_train, images=fm_train.images[:300], labels=fm_train.labels[:300]), plain)
    brightness = np.arange(300) % 192  # weight grows with brightness, so the top-64 grid is the brightest
    weighted = (_noise(300, seed=1) // 4 + brightness[:, None, None, None]).astype(np.uint8)
    _write_set(tmp_path / "weighted", weighted, source="test:weighted", **{LOG_WEIGHT: brightness / 10.0})
    _write_set(tmp_path / "resampled", fm_train.images[1000:1050], source="test:resampled",
               **{COPIES: np.full(50, 2)})  # 100 images with replacement
    out = tmp_path / "eval"
    summary = _run_cli(["evaluate", "--real", "fashion-mnist", "--domain-checkpoint", str(domain_ckpt),
                        "--set", f"plain={plain}",
                        "--set", f"weighted={tmp_path / 'weighted'}", "--set", f"resampled={tmp_path / 'resampled'}",
                        "--k", "100", "--runs", "2", "--uniform-k", "--weighted-fid", "--kid-subsets",
                        str(KID_SUBSETS), "--seed", "1", "--out", str(out)])

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["extractor"]["kind"] == "domain" and metrics["k"] == 100 and metrics["runs"] == 2
    rows = {row["name"]: row for row in metrics["rows"]}
    assert [row["name"] for row in metrics["rows"]] == [REFERENCE, "plain", "weighted", "resampled"]
    assert rows["resampled"]["pool_size"] == 100 and rows["plain"]["pool_size"] == 300
    for row in rows.values():
        assert len(row["runs"]) == 2 and all(np.isfinite(row["mean"][key]) for key in METRIC_KEYS)
    assert KEY_WEIGHTED_FID in rows["weighted"]["mean"] and KEY_WEIGHTED_FID not in rows["plain"]["mean"]
    assert 1.0 <= rows["weighted"]["mean"][KEY_WEIGHTED_FID_ESS] <= 100.0
    assert rows["weighted"]["mean"][KEY_FID] > 5 * rows[REFERENCE]["mean"][KEY_FID]
    assert summary.rows["plain"]["mean"][KEY_FID] == rows["plain"]["mean"][KEY_FID]

    table = (out / "table.md").read_text()
    assert "not Inception-V3 numbers" in table and "k = 100" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 5  # header + 4 rows
    assert "± " in table and "weighted FID" in table

    grids = {name: np.asarray(Image.open(out / f"grid_{name}.png"))
             for name in ("real", "plain", "weighted", "resampled", "weighted_top64", "weighted_bottom64")}
    assert all(grid.shape == (484, 484) for grid in grids.values())  # 8 x 8 tiles of 28 + 2 px, scaled x2
    assert grids["weighted_top64"].mean() > grids["weighted_bottom64"].mean() + 50
    assert not (out / "grid_plain_top64.png").exists()

    run = mlflow.search_runs(experiment_names=["rgm_ray"]).iloc[0]
    assert run["metrics.plain/fid_mean"] == pytest.approx(rows["plain"]["mean"][KEY_FID])
    assert run["metrics.reference/kid_std"] == pytest.approx(rows[REFERENCE]["std"][KEY_KID])

    # complete for exactly these inputs: another protocol or a re-drawn set must be scored again
    spec = EvaluateSpec(real="fashion-mnist", out=str(out), domain_checkpoint=str(domain_ckpt),
                        sets={name: str(tmp_path / name) for name in ("plain", "weighted", "resampled")},
                        config=EvalConfig(k=100, runs=2, seed=1, uniform_k=True, weighted_fid=True,
                                          kid_subsets=KID_SUBSETS))
    assert is_complete(out) and is_complete(out, spec)
    assert not is_complete(out, dataclasses.replace(spec, config=dataclasses.replace(spec.config, runs=3)))
    _write_set(tmp_path / "redrawn", fm_train.images[2000:2100], source="test:resampled")
    assert not is_complete(out, dataclasses.replace(spec, sets={**spec.sets, "resampled": str(tmp_path / "redrawn")}))


def test_cli_refuses_bad_sizes_and_missing_inception_weights(tmp_path):
    _write_set(tmp_path / "small", _noise(50), source="test:small")
    base = ["evaluate", "--real", "fashion-mnist", "--set", f"small={tmp_path / 'small'}", "--out",
            str(tmp_path / "out"), "--no-mlflow"]
    with pytest.raises(ValueError, match="fewer than k=60"):
        _run_cli(base + ["--k", "60", "--uniform-k"])
    with pytest.raises(ValueError, match="--uniform-k"):
        _run_cli(base + ["--k", "40"])
    with pytest.raises(ValueError, match="cannot be downloaded"):
        _run_cli(base + ["--k", "50", "--features", "inception"])
    assert not (tmp_path / "out" / "domain").exists()  # nothing trained before the errors
