"""Sweep configs (every shipped one validates; bad ones name the key), result tables, and ``rgm tune``
on Ray Tune with one MLflow run per trial."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rgm_ray.store import SampleSetWriter, make_table
from rgm_ray.tune.config import (ConfigError, apply_overrides, load_sweep_config, shipped_config_names,
                                 sweep_config_from_dict, sweep_config_path)
from rgm_ray.tune.results import (COMPLETED, STOPPED, best_configuration, mean_ci, paired_differences,
                                  thesis_contrasts, verdict,
                                  select_on_validation, summarize, write_results)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "tune_configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
SMOKE = CONFIG_DIR / "ssl_smoke.yaml"

# ---------------------------------------------------------------- configs


def test_shipped_configs_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"ssl_sweep.yaml", "ssl_smoke.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_sweep_config(path)
    cells = config.cells()
    assert cells and len({tuple(c.values()) for c in cells}) == len(cells)
    for cell in cells:
        assert config.ssl_config(cell).seed == cell["seed"]  # every trial builds a valid training config
        assert cell["source"] in config.sources


def test_paper_grid() -> None:
    config = load_sweep_config(CONFIG_DIR / "ssl_sweep.yaml")
    assert config.grid["sl_weight"] == (0.0, 0.0005, 0.005, 0.05, 0.5)
    assert config.grid["labels"] == (1000, 4000, "all")
    assert set(config.grid["source"]) == {"plain", "resampled", "weighted"} and len(config.grid["seed"]) == 5
    train = config.ssl_config(config.cells()[0])
    assert (train.epochs, train.batch_size, train.lr) == (20, 32, 1e-3)
    assert len(config.cells()) == 5 * 3 * 3 * 5 + 2 * 3 * 5  # grid + (real, none) baselines
    assert config.resources == {"cpu": 1.0, "gpu": 0.0}


def test_smoke_config_is_small() -> None:
    config = load_sweep_config(SMOKE)
    cells = config.cells()
    assert len(cells) == 4 and len(config.grid["labels"]) == 1 and len(config.grid["seed"]) == 2
    assert config.ssl_config(cells[0]).epochs == 1


def test_overrides() -> None:
    raw = apply_overrides({"grid": {"seed": [0]}}, ["grid.seed=[1, 2]", "train.epochs=3", "sources.x=real"])
    assert raw == {"grid": {"seed": [1, 2]}, "train": {"epochs": 3}, "sources": {"x": "real"}}
    config = load_sweep_config(SMOKE, ["grid.labels=[all, 50]", "out=/tmp/x"])
    assert config.grid["labels"] == ("all", 50) and str(config.out_dir) == "/tmp/x"
    with pytest.raises(ConfigError, match="key 'grid.seed': is not a mapping"):
        apply_overrides({"grid": {"seed": [0]}}, ["grid.seed.x.y=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


@pytest.mark.parametrize(("override", "key", "reason"), [
    ("grid.sl_weight=[-1]", "grid.sl_weight", ">= 0"),
    ("grid.sl_weight=[]", "grid.sl_weight", "non-empty list"),
    ("grid.labels=[0]", "grid.labels", "positive int"),
    ("grid.source=[nope]", "grid.source", "not a name in 'sources'"),
    ("grid.seed=[0, 0]", "grid.seed", "repeated"),
    ("grid.lr=[1]", "grid.lr", "unknown grid key"),
    ("train.epochs=0", "train.epochs", "positive int"),
    ("train.batch_size=7", "train.batch_size", "even"),
    ("train.labels=5", "train.labels", "set per trial"),
    ("train.epoch=1", "train.epoch", "unknown setting"),
    ("sources.plain='weighted:'", "sources.plain", "needs a sample-set directory"),
    ("dataset=mnist", "dataset", "not one of"),
    ("resources_per_trial.cpu=0", "resources_per_trial.cpu", "> 0"),
    ("resources_per_trial.tpu=1", "resources_per_trial", "cpu and/or gpu"),
    ("scheduler.type=pbt", "scheduler.type", "not one of"),
    ("scheduler={type: asha, grace_period: 5}", "scheduler.grace_period", "exceeds train.epochs"),
    ("compare_to=zzz", "compare_to", "not a swept source"),
    ("baselines=[{source: none}]", "baselines[0]", "exactly source, sl_weight"),
    ("max_concurrent_trials=0", "max_concurrent_trials", "positive int"),
    ("epochs=3", "epochs", "unknown key"),
    ("name=null", "name", "required"),
])
def test_bad_config_names_the_key(override: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sweep_config(SMOKE, [override])
    assert info.value.key == key and reason in info.value.reason
    assert f"key '{key}'" in str(info.value) and "ssl_smoke.yaml" in str(info.value)


def test_config_must_be_a_mapping(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_sweep_config(bad)
    with pytest.raises(ConfigError, match="key 'sources'"):
        sweep_config_from_dict({"name": "x", "dataset": "fashion-mnist", "sources": {}, "grid": {}})


def test_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch) -> None:
    """``rgm tune --config ssl_smoke`` and the pipeline's ``ssl.config`` name shipped configs (here the
    source checkout's tune_configs/; tests/test_wheel.py checks an installed wheel); a path still works."""
    monkeypatch.chdir(tmp_path)
    assert shipped_config_names() == [p.stem for p in SHIPPED]
    for name in ("ssl_smoke", "ssl_smoke.yaml"):
        assert sweep_config_path(name) == SMOKE and load_sweep_config(name).name == "ssl_smoke"
    (tmp_path / "ssl_smoke.yaml").write_text(SMOKE.read_text().replace("name: ssl_smoke", "name: mine"))
    # a shipped name wins over a same-named file here (a stray copy must not change a preset's sweep) ...
    assert load_sweep_config("ssl_smoke.yaml").name == "ssl_smoke"
    assert load_sweep_config("./ssl_smoke.yaml").name == "mine"  # ... which a path names
    for missing in ("ssl_nope", "sub/ssl_smoke", "ssl_smoke.yml", str(tmp_path)):
        with pytest.raises(FileNotFoundError, match="no such sweep configuration .*shipped name: ssl_demo, "):
            sweep_config_path(missing)


# ---------------------------------------------------------------- result tables


def test_mean_ci_is_student_t() -> None:
    mean, std, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * s / sqrt(n)
    assert mean == 3.0 and std == pytest.approx(math.sqrt(2.5))
    assert (lo, hi) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert math.isnan(mean_ci([0.5])[2]) and mean_ci([0.5])[0] == 0.5


def _rows() -> list[dict]:
    """Two sources x two weights x three seeds: w=0 wins on validation, w=0.5 on test."""
    rows = []
    for source, shift in (("plain", 0.0), ("resampled", 0.01)):
        for w, val, test in ((0.0, 0.80, 0.60), (0.5, 0.70, 0.90)):
            for seed in range(3):
                rows.append({"trial": f"{source}{w}{seed}", "labels": 100, "source": source, "sl_weight": w,
                             "seed": seed, "status": COMPLETED, "val_acc": val + shift + 0.001 * seed,
                             "test_acc": test + shift + 0.002 * seed})
    rows.append({**rows[0], "seed": 3, "status": STOPPED, "val_acc": 0.99, "test_acc": None})
    return rows


def test_selection_uses_validation_only_and_differences_are_paired() -> None:
    rows = _rows()
    groups = summarize(rows)
    assert [(g["source"], g["sl_weight"], g["n"], g["n_incomplete"]) for g in groups] == [
        ("plain", 0.0, 3, 1), ("plain", 0.5, 3, 0), ("resampled", 0.0, 3, 0), ("resampled", 0.5, 3, 0)]
    assert groups[0]["test_acc_mean"] == pytest.approx(0.602)  # the stopped trial is left out
    selected = select_on_validation(groups)
    assert [(g["source"], g["sl_weight"]) for g in selected] == [("plain", 0.0), ("resampled", 0.0)]
    best = best_configuration(groups)
    assert (best["source"], best["sl_weight"]) == ("resampled", 0.0)
    diffs = paired_differences(rows, "plain")
    assert [(d["source"], d["sl_weight"], d["n_pairs"]) for d in diffs] == [("resampled", 0.0, 3), ("resampled", 0.5, 3)]
    assert diffs[0]["diff_mean"] == pytest.approx(0.01) and diffs[0]["diff_std"] == pytest.approx(0, abs=1e-12)


def test_thesis_contrasts_pair_resampled_with_plain_and_everything_with_no_unlabelled_data() -> None:
    rows = [{"labels": 1000, "source": source, "sl_weight": w, "seed": seed, "status": COMPLETED, "val_acc": 0.5,
             "test_acc": acc + (0.01 * seed if source != "vae_resampled" else 0.002 * seed)}
            for source, w, acc in (("vae_plain", 0.5, 0.80), ("vae_resampled", 0.5, 0.81), ("none", 0.0, 0.78))
            for seed in range(3)]
    diffs = {(d["source"], d["reference"]): d for d in thesis_contrasts(rows)}
    assert set(diffs) == {("vae_resampled", "vae_plain"), ("vae_resampled", "none"), ("vae_plain", "none")}
    plain_vs_none = diffs[("vae_plain", "none")]  # none's one SL weight (0) pairs with the others' 0.5
    assert plain_vs_none["reference_sl_weight"] == 0.0 and plain_vs_none["n_pairs"] == 3
    assert plain_vs_none["diff_mean"] == pytest.approx(0.02) and verdict(plain_vs_none) == "yes: higher"
    resampled_vs_plain = diffs[("vae_resampled", "vae_plain")]  # +0.01, -0.006 per seed: the interval holds 0
    assert resampled_vs_plain["diff_mean"] == pytest.approx(0.002) and verdict(resampled_vs_plain).startswith("no")
    assert verdict({"diff_ci_low": "", "diff_ci_high": ""}).startswith("cannot tell")


def test_write_results(tmp_path) -> None:
    tables = write_results(tmp_path, _rows(), title="t", reference="plain")
    summary = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert len(summary) == 4 and {"test_acc_mean", "test_acc_std", "test_acc_ci_low", "test_acc_ci_high"} <= set(summary[0])
    md = (tmp_path / "summary.md").read_text()
    assert "test 95 % CI" in md and "Δ test vs plain (paired)" in md and "labels=100, source=resampled, w=0" in md
    assert (tmp_path / "trials.csv").read_text().count("\n") == 14  # header + 13 trials
    assert set(tables["files"]) == {"trials.csv", "summary.csv", "selected.csv", "summary.md", "differences.csv"}


# ---------------------------------------------------------------- rgm tune on Ray


@pytest.fixture
def cli_main(monkeypatch):
    """``rgm`` with the ssl/tune commands registered (a no-op once main.py lists them)."""
    import rgm_ray.cli.main as cli
    from rgm_ray.cli import cmd_ssl, cmd_tune

    extra = tuple(c for c in (cmd_ssl, cmd_tune) if c not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + extra)
    return cli.main


@pytest.mark.ray
def test_rgm_tune_smoke_one_mlflow_run_per_trial(ray_local, tmp_path, tracking_uri, fmnist_test, cli_main,
                                                 capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts artefacts under the working directory
    plain = tmp_path / "plain"
    with SampleSetWriter(plain, source="test:generated") as writer:
        writer.write(make_table(np.arange(64), fmnist_test.images[:64], None, source="test:generated"))
    out = tmp_path / "sweep"
    argv = ["tune", "--config", str(SMOKE), "--out", str(out), "--json",
            "--set", f"sources.plain={plain}", "--set", "grid.source=[real, plain]", "--set", "grid.seed=[0]",
            "--set", "grid.sl_weight=[0.5]", "--set", "train.steps_per_epoch=3", "--set", "train.train_subset=600",
            "--set", "train.val_size=60", "--set", "train.test_subset=100", "--set", "compare_to=real",
            "--set", "name=smoke_test"]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout holds only the JSON summary
    assert summary["trials"] == 2 and summary["completed"] == 2 and summary["error"] == 0

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # another test may have left MLflow pointing at its own store
    everything = mlflow.search_runs(experiment_names=["smoke_test"])
    (sweep,) = everything[everything["tags.mlflow.runName"] == "tune-smoke_test"].itertuples()
    runs = everything[everything["tags.mlflow.parentRunId"] == sweep.run_id]  # the trials, nested under the sweep
    assert len(everything) == 3 and len(runs) == 2
    assert sorted(runs["tags.rgm.trial"]) == ["l100_plain_w0.5_s0", "l100_real_w0.5_s0"]
    assert set(everything["status"]) == {"FINISHED"} and runs["metrics.test_acc"].notna().all()
    assert set(runs["params.source"]) == {"real", "plain"} and set(runs["tags.rgm.out"]) == {str(out.resolve())}
    client = mlflow.tracking.MlflowClient(tracking_uri)
    assert all([a.path for a in client.list_artifacts(run_id)] == ["metrics.json"] for run_id in runs["run_id"])
    # the sweep's own run: its config as params, its counts and best cell as metrics, its tables as artefacts
    sweep_run = client.get_run(sweep.run_id)
    assert sweep_run.data.params["grid.sl_weight"] == "(0.5,)" and sweep_run.data.params["trials"] == "2"
    assert sweep_run.data.metrics["completed"] == 2 and 0 < sweep_run.data.metrics["best_test_acc_mean"] <= 1
    assert {"summary.md", "summary.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(sweep.run_id)}
    plain_trial = client.get_run(runs[runs["params.source"] == "plain"]["run_id"].iloc[0])
    assert [d.dataset.name for d in plain_trial.inputs.dataset_inputs] == [f"{tmp_path.name}/plain"]

    trials = list(csv.DictReader(io.StringIO((out / "trials.csv").read_text())))
    assert {t["trial"] for t in trials} == set(runs["tags.rgm.trial"])
    by_trial = dict(zip(runs["tags.rgm.trial"], runs["metrics.test_acc"]))
    assert all(float(t["test_acc"]) == pytest.approx(by_trial[t["trial"]]) for t in trials)
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"labels", "source", "sl_weight", "n", "test_acc_mean", "test_acc_std", "test_acc_ci_low",
            "test_acc_ci_high", "val_acc_mean"} <= set(header)
    md = (out / "summary.md").read_text()
    assert "95 % CI" in md and "Best configuration (validation)" in md and (out / "differences.csv").is_file()
    for trial in trials:  # each trial's metrics.json sits in its Tune directory
        assert json.loads((Path(summary["ray_results"]) / trial["trial"] / "metrics.json").read_text())["labels"] == "100"

    assert cli_main(argv) == 2  # a finished sweep is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert len(mlflow.search_runs(experiment_names=["smoke_test"])) == 3  # and the refusal opened no run


# ---------------------------------------------------------------- data shared by the trials


@pytest.mark.ray
def test_sweep_data_keeps_image_strides_through_the_object_store(ray_local, fmnist_test) -> None:
    """The object store gives arrays canonical strides; a size-1 axis's stride decides whether torch
    takes a batch for channels-last (and so how a convolution rounds), so it must survive the trip."""
    from rgm_ray.ssl.sources import pool_from_images
    from rgm_ray.tune.sweep import SweepData

    ray = ray_local
    images = fmnist_test.images  # [N, 1, 28, 28] with stride 0 on the channel axis, as load_dataset makes it
    assert ray.get(ray.put(images)).strides != images.strides  # a bare array loses it
    data = SweepData(fmnist_test, fmnist_test, {"plain": pool_from_images(images[:8].copy())})
    back = ray.get(ray.put(data))
    for before, after in ((data.train, back.train), (data.test, back.test), (data.pools["plain"], back.pools["plain"])):
        assert after.images.strides == before.images.strides and np.array_equal(after.images, before.images)
    assert np.array_equal(back.train.labels, fmnist_test.labels) and list(back.pools) == ["plain"]


@pytest.mark.ray
def test_sweep_reads_each_source_once_and_matches_per_run_loading(ray_local, tmp_path, fmnist_test,
                                                                 monkeypatch) -> None:
    """The driver reads the real splits and the sample set once; the trials (the second in a reused
    actor) get them from the object store, and train exactly as runs reading their own data do."""
    import shutil

    import rgm_ray.tune.sweep as sweep
    from rgm_ray.ssl.stage import run_ssl

    plain = tmp_path / "plain"
    with SampleSetWriter(plain, source="test:generated") as writer:
        writer.write(make_table(np.arange(64), fmnist_test.images[:64], None, source="test:generated"))
    config = load_sweep_config(SMOKE, [f"sources.plain={plain}", "grid.source=[real, plain]", "grid.seed=[1]",
                                       "grid.sl_weight=[0.5]", "grid.labels=[20]", "train.steps_per_epoch=3",
                                       "train.train_subset=600", "train.val_size=60", "train.test_subset=100",
                                       "max_concurrent_trials=1", "name=once"])
    expected = {sweep.trial_name(cell): run_ssl(config.dataset, config.sources[cell["source"]],
                                                config.ssl_config(cell))["history"] for cell in config.cells()}
    reads = {"dataset": 0, "sample_set": 0}

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            reads[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    def read_then_delete(cfg):
        inputs = read_inputs(cfg)
        shutil.rmtree(plain)  # a trial reading the set itself would now fail
        return inputs

    read_inputs = sweep.read_inputs
    monkeypatch.setattr(sweep, "load_dataset", counted("dataset", sweep.load_dataset))
    monkeypatch.setattr(sweep, "load_sample_set_pool", counted("sample_set", sweep.load_sample_set_pool))
    monkeypatch.setattr(sweep, "read_inputs", read_then_delete)
    result = sweep.run_sweep(config, out=tmp_path / "sweep")  # no tracker: trials untracked
    assert reads == {"dataset": 2, "sample_set": 1}  # train + test splits, one set
    assert result.metrics["completed"] == 2
    for name, history in expected.items():
        metrics = json.loads((Path(result.ray_results) / name / "metrics.json").read_text())
        assert metrics["history"] == json.loads(json.dumps(history)), name  # bit for bit
    assert len({json.loads((Path(result.ray_results) / n / "result.json").read_text().splitlines()[0])["pid"]
                for n in expected}) == 1  # the second trial ran in the first one's actor


def test_bench_ssl_cli_parses_and_checks_its_source() -> None:
    import argparse

    from rgm_ray.bench.ssl import bench_ssl
    from rgm_ray.cli import cmd_bench

    parser = argparse.ArgumentParser()
    cmd_bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "ssl", "--steps", "5", "--source", "plain", "--no-mlflow",
                              "--set", "sources.plain=DIR"])
    assert (args.handler, args.steps, args.source, args.no_mlflow, args.overrides) == (
        cmd_bench.run_bench_ssl, 5, "plain", True, ["sources.plain=DIR"])
    assert Path(parser.parse_args(["bench", "ssl"]).config).name == "ssl_demo.yaml"
    with pytest.raises(ConfigError, match="'nope' is not a name in 'sources'"):
        bench_ssl(SMOKE, source="nope")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        bench_ssl(SMOKE, steps=1)


def test_report_table_6_4_shows_the_paired_differences_in_words(tmp_path) -> None:
    from rgm_ray.report.build import section_ssl

    rows = [{"trial": f"{source}{seed}", "labels": 100, "source": source, "sl_weight": w, "seed": seed,
             "status": COMPLETED, "val_acc": 0.5, "test_acc": acc + 0.01 * seed}
            for source, w, acc in (("plain", 0.5, 0.70), ("resampled", 0.5, 0.72), ("none", 0.0, 0.69))
            for seed in range(3)]
    write_results(tmp_path, rows, title="t", reference="plain")
    section = section_ssl({"ssl": {"out": str(tmp_path)}})
    table = section.tables[-1]
    assert "distinguishable from 0?" in table.headers
    cells = {row[1]: row for row in table.rows}
    assert set(cells) == {"resampled − plain", "resampled − none", "plain − none"}
    assert cells["resampled − plain"][4] == "+2.00 ± 0.00" and cells["resampled − plain"][6] == "yes: higher"
