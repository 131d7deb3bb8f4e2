"""The weigh stage end to end on Ray Data, with a tiny domain backbone trained once per module."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from rgm_ray.cli import cmd_weigh
from rgm_ray.data.datasets import ImageDataset
from rgm_ray.models.domain import DomainConfig, train_domain_classifier
from rgm_ray.store import (ArtefactExistsError, SampleSet, SampleSetWriter, export_dataset, make_table,
                           verify_sample_set)
from rgm_ray.runtime import ClusterOptions
from rgm_ray.weigh import (HeadConfig, ScoringOptions, WeighConfig, WeighSpec, assign_folds, read_crossfit,
                           score_sample_set, weigh)

pytestmark = pytest.mark.ray

N_SAMPLES = 1000
HEAD = HeadConfig(hidden=128, epochs=20, lr=1e-2)  # strong enough to overfit: calibration must tame it


def _subset(dataset: ImageDataset, n: int) -> ImageDataset:
    return ImageDataset(dataset.name, dataset.split, dataset.images[:n], dataset.labels[:n], dataset.classes,
                        dataset.source)


@pytest.fixture(scope="module")
def domain_ckpt(tmp_path_factory, fmnist_test):
    from rgm_ray.data import load_dataset

    out = tmp_path_factory.mktemp("domain") / "ckpt"
    train_domain_classifier(load_dataset("fashion-mnist", "train"), _subset(fmnist_test, 200),
                            DomainConfig(epochs=1, batch_size=64, train_images=512), out)
    return out


@pytest.fixture(scope="module")
def test_split_samples(tmp_path_factory, fmnist_test):
    """Real-vs-real: 1000 Fashion-MNIST *test* images exported as the "generated" samples."""
    out = tmp_path_factory.mktemp("samples") / "set"
    export_dataset(_subset(fmnist_test, N_SAMPLES), out, shard_size=250)
    return out


@pytest.fixture(scope="module")
def real_vs_real(ray_local, tmp_path_factory, domain_ckpt, test_split_samples):
    out = tmp_path_factory.mktemp("weigh") / "out"
    spec = WeighSpec(real="fashion-mnist", samples=str(test_split_samples), out=str(out),
                     config=WeighConfig(domain_checkpoint=str(domain_ckpt), head=HEAD, seed=3),
                     scoring=ScoringOptions(batch_size=64))
    return out, weigh(spec, ClusterOptions(workers=2, cpus_per_worker=0.5))


@pytest.fixture(scope="module")
def rescored(real_vs_real, test_split_samples):
    """The same set scored again by the fitted weigher: one worker, batches of 37, Ray Data's own blocks."""
    out, _ = real_vs_real
    return score_sample_set(SampleSet(test_split_samples), str(out / "classifier"),
                            ClusterOptions(workers=1, cpus_per_worker=0.5), ScoringOptions(batch_size=37, blocks=0))


def test_real_vs_real_is_indistinguishable(real_vs_real):
    _, result = real_vs_real
    s = result.to_dict()
    assert 0.40 < s["accuracy_before"] < 0.60 and 0.40 < s["accuracy_after"] < 0.60
    assert 0.40 < s["roc_auc_after"] < 0.60
    assert abs(s["log_weight_mean"]) < 0.1 and s["log_weight_max"] - s["log_weight_min"] < 3
    assert s["ess_frac"] > 0.9
    assert s["ece_after"] <= s["ece_before"] + 0.01
    assert "excluded the 512 real images the domain backbone was trained on" in s["notes"]
    # the pool's actors (two, or one when the other started late on a loaded machine) scored every row
    assert 1 <= len(s["rows_per_worker"]) <= 2 and sum(s["rows_per_worker"].values()) == 1000
    assert s["scoring_max_abs_diff"] == 0.0  # Ray Data reproduced the driver's out-of-fold logits bit for bit


def test_output_set_and_diagnostics(real_vs_real, rescored, test_split_samples):
    out, _ = real_vs_real
    weighted, source = SampleSet(out / "weighted"), SampleSet(test_split_samples)
    assert verify_sample_set(out / "weighted") == []
    got, want = weighted.read(), source.read()
    for column in ("sample_id", "image", "label"):
        assert np.array_equal(got[column], want[column])
    assert got["log_weight"].dtype == np.float32
    assert np.array_equal(got["log_weight"], rescored.log_weights[np.searchsorted(rescored.sample_ids,
                                                                                  got["sample_id"])])
    assert weighted.source == source.source and weighted.manifest.info["weighing"]["folds"] == 2
    calibration = json.loads((out / "calibration.json").read_text())
    assert len(calibration["temperatures"]) == 2 and calibration["bins"] == 10
    assert set(calibration["pooled"]["after"]) >= {"accuracy", "roc_auc", "ece", "brier", "nll"}
    assert sum(calibration["reliability"]["before"]["count"]) == calibration["pooled"]["before"]["n"]
    summary = json.loads((out / "weights_summary.json").read_text())
    assert summary["n"] == N_SAMPLES and {"ess", "ess_frac", "max_share", "ess_alpha_0.5"} <= set(summary)
    for png in ("reliability.png", "log_weight_hist.png", "ess_vs_alpha.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "features").glob("*.npy"))) == 2


def test_no_sample_is_weighed_by_a_model_that_saw_it(real_vs_real, rescored):
    out, _ = real_vs_real
    scores, crossfit = rescored, read_crossfit(out / "classifier")
    assert np.array_equal(scores.folds, assign_folds(scores.sample_ids, seed=3, folds=2))
    for k in range(2):
        fitted_on = set(crossfit[f"train_gen_{k}"]) | set(crossfit[f"calib_gen_{k}"])
        scored_by_k = set(scores.sample_ids[scores.folds == k])
        assert fitted_on and scored_by_k and not fitted_on & scored_by_k
        assert set(crossfit[f"test_gen_{k}"]) <= scored_by_k


def test_weights_do_not_depend_on_batch_size_or_workers(real_vs_real, rescored):
    out, result = real_vs_real  # scored with 2 workers, batches of 64, 8 blocks
    assert result.workers == 2 and rescored.workers == 1 and len(rescored.rows_per_worker) == 1
    first = SampleSet(out / "weighted").read(["sample_id", "log_weight"])
    order = np.argsort(first["sample_id"])
    assert np.array_equal(first["sample_id"][order], rescored.sample_ids)
    assert np.array_equal(first["log_weight"][order], rescored.log_weights)


def test_existing_output_is_refused_without_overwrite(real_vs_real, test_split_samples):
    out, _ = real_vs_real
    with pytest.raises(ArtefactExistsError, match="--overwrite"):
        weigh(WeighSpec(real="fashion-mnist", samples=str(test_split_samples), out=str(out)))


def test_shape_mismatch_is_a_clear_error(ray_local, tmp_path, domain_ckpt):
    rgb = tmp_path / "rgb"
    with SampleSetWriter(rgb, source="test:rgb") as writer:
        writer.write(make_table(np.arange(4), np.zeros((4, 3, 32, 32), np.uint8), None, source="test:rgb"))
    with pytest.raises(ValueError, match=r"image shapes differ: --real fashion-mnist has \(1, 28, 28\)"):
        weigh(WeighSpec(real="fashion-mnist", samples=str(rgb), out=str(tmp_path / "out"),
                        config=WeighConfig(domain_checkpoint=str(domain_ckpt))))


def test_noise_baseline_through_the_cli(ray_local, tmp_path, domain_ckpt):
    parser = argparse.ArgumentParser()
    cmd_weigh.register(parser.add_subparsers())
    args = parser.parse_args(["weigh", "--real", "fashion-mnist", "--baseline", "noise", "--num-noise", "1000",
                              "--out", str(tmp_path / "noise"), "--domain-checkpoint", str(domain_ckpt),
                              "--epochs", "20", "--lr", "1e-2", "--hidden", "64", "--workers", "1", "--no-mlflow"])
    result = args.handler(args)
    summary = result.to_dict()
    assert summary["accuracy_after"] > 0.99 and summary["roc_auc_after"] > 0.99
    weighted = SampleSet(tmp_path / "noise" / "weighted")
    assert len(weighted) == 1000 and weighted.source == "baseline:uniform-noise"
    # Near-zero weights: >99 % of the noise images are judged less likely real than not, typically by a
    # factor > 20. (Platt-smoothed temperature fitting caps the confidence at about log(n_calibration).)
    log_weights = weighted.read(["log_weight"])["log_weight"]
    assert np.mean(log_weights < 0) > 0.99 and np.median(log_weights) < -3
    assert "weighed 1000 samples" in result.message


def test_bench_plain_loop_scores_like_ray_data(real_vs_real, rescored, test_split_samples):
    """``rgm bench weigh``'s baseline loop is the same computation as Ray Data's pass, so its speed compares like
    with like: equal log-weights for every sample, in sample_id order."""
    from rgm_ray.bench.weigh import plain_loop

    out, _ = real_vs_real
    seconds, log_weights = plain_loop(SampleSet(test_split_samples), out / "classifier", threads=1, batch_size=50)
    assert seconds > 0 and log_weights.shape == rescored.log_weights.shape
    np.testing.assert_allclose(log_weights, rescored.log_weights, rtol=0, atol=1e-5)
