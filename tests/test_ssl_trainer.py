"""The semi-supervised trainer, its data splits and unlabelled sources, and ``rgm ssl`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.seeding import numpy_rng
from rgm_ray.ssl.sources import (NONE, REAL, SET, WEIGHTED, UnlabeledPool, load_sample_set_pool, parse_source,
                                 pool_from_images)
from rgm_ray.ssl.stage import METRICS_JSON, load_ssl_data, select_indices
from rgm_ray.ssl.trainer import (KEY_BEST_EPOCH, KEY_TEST_ACC, KEY_TEST_ACC_LAST, KEY_VAL_ACC, IndexStream,
                                 SSLConfig, SSLData, parse_labels, train_ssl)
from rgm_ray.store import COPIES, LOG_WEIGHT, SampleSetWriter, make_table
from rgm_ray.weigh.transforms import self_normalize

# ---------------------------------------------------------------- helpers


def _write_set(path, images: np.ndarray, **extra: np.ndarray) -> str:
    with SampleSetWriter(path, source="test:generated") as writer:
        writer.write(make_table(np.arange(len(images)), images, None, source="test:generated", extra=extra))
    return str(path)


def _toy_data(n_lab: int = 40, n_unl: int = 64, size: int = 8, seed: int = 0, weighted: bool = False) -> SSLData:
    """Four classes told apart by which image quadrant is bright (learnable in a few dozen steps)."""
    rng = numpy_rng(seed, 99)

    def images(labels: np.ndarray) -> np.ndarray:
        x = rng.integers(0, 60, size=(len(labels), 1, size, size), dtype=np.uint8)
        h = size // 2
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            x[i, 0, r * h:(r + 1) * h, q * h:(q + 1) * h] += 180
        return x

    lab, val, test, unl = (np.arange(n) % 4 for n in (n_lab, 32, 32, n_unl))
    pool = pool_from_images(images(unl))
    if weighted:
        pool = UnlabeledPool(pool.images, pool.rows, self_normalize(rng.normal(size=n_unl)))
    return SSLData(labeled_x=images(lab), labeled_y=lab, val_x=images(val), val_y=val, test_x=images(test),
                   test_y=test, pool_size=n_lab, num_classes=4, unlabeled=pool)


def _toy_model(seed: int = 0) -> ResNet:
    return ResNet(ResNetConfig(in_channels=1, num_classes=4, blocks=(1, 1), widths=(8, 16)), seed=seed)


# ---------------------------------------------------------------- config, streams, splits


def test_config_validation_and_labels() -> None:
    assert parse_labels("all") is None and parse_labels(1000) == 1000 and parse_labels("40") == 40
    cfg = SSLConfig.from_dict({"labels": "all", "sl_weight": 0.5})
    assert cfg.labels is None and cfg.labels_name == "all" and cfg.half_batch == 16
    assert cfg.steps_for(55_000) == 3438  # ceil(55000 / 16): one pass of the pool's labels
    assert SSLConfig(steps_per_epoch=7).steps_for(55_000) == 7
    for bad in ({"batch_size": 31}, {"sl_weight": -1.0}, {"labels": 0}, {"epochs": 0}, {"weight_alpha": 2.0},
                {"lr": 0.0}, {"val_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SSLConfig(**bad)
    with pytest.raises(ValueError, match="unknown SSL config key"):
        SSLConfig.from_dict({"epoch": 3})


def test_index_stream_passes_are_full_permutations() -> None:
    stream = IndexStream(10, seed=3, stream=1)
    draws = np.concatenate([stream.take(4) for _ in range(5)])  # 20 draws = exactly 2 passes, batches straddle
    assert np.array_equal(np.sort(draws[:10]), np.arange(10)) and np.array_equal(np.sort(draws[10:]), np.arange(10))
    again = IndexStream(10, seed=3, stream=1)
    assert np.array_equal(np.concatenate([again.take(4) for _ in range(5)]), draws)
    assert not np.array_equal(IndexStream(10, seed=4, stream=1).take(10), draws[:10])
    assert IndexStream(3, seed=0, stream=1).take(8).size == 8  # batch larger than n: wraps around


def test_real_splits_are_disjoint_balanced_and_fixed_across_seeds() -> None:
    labels = numpy_rng(0).permutation(np.repeat(np.arange(10), 100))  # 1000 images, 100 per class
    config = SSLConfig(labels=50, val_size=100, test_subset=30, seed=1)
    s = select_indices(labels, 200, config)
    assert s.labeled.size == 50 and s.val.size == 100 and s.pool_size == 900 and s.test.size == 30
    assert np.bincount(labels[s.labeled], minlength=10).tolist() == [5] * 10
    assert not np.intersect1d(s.labeled, s.val).size and not np.intersect1d(s.remainder, s.val).size
    assert not np.intersect1d(s.labeled, s.remainder).size and s.labeled.size + s.remainder.size == 900
    other = select_indices(labels, 200, SSLConfig(labels=50, val_size=100, test_subset=30, seed=2))
    assert np.array_equal(other.val, s.val) and np.array_equal(other.test, s.test)  # same selection set
    assert not np.array_equal(other.labeled, s.labeled)
    everything = select_indices(labels, 200, SSLConfig(labels=None, val_size=100))
    assert everything.labeled.size == 900 and everything.remainder.size == 0
    sub = select_indices(labels, 200, SSLConfig(labels=20, train_subset=300))
    assert sub.pool_size + sub.val.size == 300 and sub.val.size == 30  # default val = pool // 10
    with pytest.raises(ValueError, match="too few examples"):
        select_indices(labels, 200, SSLConfig(labels=950, val_size=100))


# ---------------------------------------------------------------- unlabelled sources


def test_parse_source() -> None:
    assert parse_source("none").kind == NONE and parse_source("real").kind == REAL
    spec = parse_source("weighted:runs/w")
    assert spec.kind == WEIGHTED and str(spec.path) == "runs/w" and str(spec) == "weighted:runs/w"
    assert parse_source("runs/samples/pixelcnn").kind == SET
    assert parse_source("runs/samples/pixelcnn").default_name == "pixelcnn"
    for bad in ("", "weighted:", "  "):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_sample_set_sources(tmp_path) -> None:
    images = numpy_rng(1).integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8)
    copies = np.array([0, 3, 1, 0, 2, 1])
    lw = np.array([0.0, 1.0, -2.0, 3.0, -np.inf, 0.5], dtype=np.float32)
    # A resampled set keeps the original log-weights; used plainly they must not weigh anything.
    resampled = parse_source(_write_set(tmp_path / "res", images, **{COPIES: copies, LOG_WEIGHT: lw}))
    pool = load_sample_set_pool(resampled, (1, 4, 4))
    assert pool.weights is None and np.array_equal(np.bincount(pool.rows, minlength=6), copies)
    weighted_dir = _write_set(tmp_path / "w", images, **{LOG_WEIGHT: lw})
    pool = load_sample_set_pool(parse_source(f"weighted:{weighted_dir}"), (1, 4, 4))
    np.testing.assert_allclose(pool.weights, self_normalize(lw.astype(np.float64)))
    assert pool.weights[4] == 0 and 4 not in pool.rows and len(pool) == 5 and pool.info["ess"] > 1
    flat = load_sample_set_pool(parse_source(f"weighted:{weighted_dir}"), (1, 4, 4), weight_alpha=0.0)
    np.testing.assert_allclose(flat.weights[[0, 1, 2, 3, 5]], 0.2)
    assert load_sample_set_pool(parse_source(weighted_dir), (1, 4, 4)).weights is None  # plain use ignores weights
    with pytest.raises(ValueError, match="has a 'copies' column"):
        load_sample_set_pool(parse_source(f"weighted:{resampled.path}"), (1, 4, 4))
    plain = _write_set(tmp_path / "plain", images)
    with pytest.raises(ValueError, match="no column"):
        load_sample_set_pool(parse_source(f"weighted:{plain}"), (1, 4, 4))
    with pytest.raises(ValueError, match="images are"):
        load_sample_set_pool(resampled, (1, 28, 28))


# ---------------------------------------------------------------- the training loop


def test_trainer_learns_is_deterministic_and_reports_test_once() -> None:
    config = SSLConfig(epochs=3, steps_per_epoch=12, batch_size=16, sl_weight=0.1, eval_batch_size=64, seed=5)
    records: list[dict] = []
    result = train_ssl(_toy_model(), _toy_data(weighted=True), config, on_epoch=records.append)
    history = result["history"]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result[KEY_TEST_ACC] > 0.5  # chance is 0.25
    assert all(KEY_TEST_ACC not in r for r in history[:-1])  # test evaluated once, at the end
    assert result[KEY_VAL_ACC] == max(r["val_acc"] for r in history)
    assert result["steps"] == 36 and result["sizes"]["unlabeled"] == 64
    again = train_ssl(_toy_model(), _toy_data(weighted=True), config)
    assert again["history"] == history  # same seed, same run


def test_trainer_selects_on_validation_and_stops_early() -> None:
    data = _toy_data()
    config = SSLConfig(epochs=8, steps_per_epoch=3, batch_size=8, lr=1e-2, patience=1, eval_batch_size=64)
    model = _toy_model()
    result = train_ssl(model, data, config)
    accs = [r["val_acc"] for r in result["history"]]
    assert accs[-1] > 0.5  # it learned before it stopped
    # patience 1: the run ends at the first epoch that does not beat the best so far
    stop = next((e + 1 for e in range(1, len(accs)) if accs[e] <= max(accs[:e])), config.epochs)
    assert result["epochs_run"] == stop < config.epochs
    assert result[KEY_BEST_EPOCH] == accs.index(max(accs)) + 1 < stop
    # the model is left holding the selected weights: re-evaluating it reproduces test_acc
    from rgm_ray.ssl.trainer import evaluate

    acc, _ = evaluate(model, data.test_x, data.test_y, batch_size=64, device=torch.device("cpu"))
    assert acc == result[KEY_TEST_ACC] and KEY_TEST_ACC_LAST in result


def test_trainer_without_unlabelled_source_uses_labelled_half_only() -> None:
    data = _toy_data()
    data = SSLData(**{**data.__dict__, "unlabeled": None})
    result = train_ssl(_toy_model(), data, SSLConfig(epochs=1, steps_per_epoch=3, batch_size=8, sl_weight=0.5))
    assert result["history"][0]["train_sl"] == 0.0 and result["sizes"]["unlabeled"] == 0


# ---------------------------------------------------------------- end to end on Fashion-MNIST


def test_real_source_with_all_labels_reuses_the_labelled_pool() -> None:
    config = SSLConfig(labels=None, train_subset=300, val_size=30, test_subset=50)
    data = load_ssl_data("fashion-mnist", parse_source("real"), config)
    assert data.unlabeled.info["reuses_labeled"] and np.array_equal(data.unlabeled.images, data.labeled_x)
    few = load_ssl_data("fashion-mnist", parse_source("real"), SSLConfig(labels=20, train_subset=300, val_size=30))
    assert not few.unlabeled.info["reuses_labeled"] and len(few.unlabeled) == 250 and len(few.labeled_x) == 20


@pytest.fixture
def cli_main(monkeypatch):
    """``rgm`` with the ssl/tune commands registered (a no-op once main.py lists them)."""
    import rgm_ray.cli.main as cli
    from rgm_ray.cli import cmd_ssl, cmd_tune

    extra = tuple(c for c in (cmd_ssl, cmd_tune) if c not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + extra)
    return cli.main


def test_rgm_ssl_end_to_end(tmp_path, tracking_uri, fmnist_test, cli_main, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow puts artefacts under the working directory
    # A "resampled" set of real test images with copies, standing in for generated samples.
    images = fmnist_test.images[:64]
    copies = numpy_rng(0).integers(0, 3, size=64)
    resampled = _write_set(tmp_path / "resampled", images, **{COPIES: copies})
    out = tmp_path / "run"
    argv = ["ssl", "--labels", "20", "--unlabeled", resampled, "--unlabeled-name", "resampled", "--sl-weight", "0.5",
            "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16", "--train-subset", "600",
            "--val-size", "60", "--test-subset", "100", "--seed", "3", "--out", str(out), "--json"]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / METRICS_JSON).read_text())
    assert metrics["sizes"] == {"labeled": 20, "val": 60, "test": 100, "pool": 540, "unlabeled": int(copies.sum())}
    assert metrics["unlabeled_name"] == "resampled" and metrics["labels"] == "20"
    assert len(metrics["history"]) == 2 and 0 <= metrics[KEY_TEST_ACC] <= 1
    assert summary[KEY_TEST_ACC] == metrics[KEY_TEST_ACC]

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # another test may have left MLflow pointing at its own store
    runs = mlflow.search_runs(experiment_names=["rgm_ray"])
    assert len(runs) == 1 and runs["params.unlabeled_name"].iloc[0] == "resampled"
    assert runs["metrics.test_acc"].iloc[0] == pytest.approx(metrics[KEY_TEST_ACC])

    assert cli_main(argv[:-1] + ["--no-mlflow"]) == 2  # metrics.json exists
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["ssl", "--labels", "20", "--unlabeled", str(tmp_path / "missing"), "--train-subset", "600",
                     "--out", str(tmp_path / "x"), "--no-mlflow"]) == 2
    assert "missing" in capsys.readouterr().err
