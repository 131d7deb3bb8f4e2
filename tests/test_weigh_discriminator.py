"""``rgm weigh --backbone gan-discriminator``: a tiny GAN's own discriminator, temperature-scaled, as the weigher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rgm_ray.cli import cmd_weigh
from rgm_ray.cli.main import main
from rgm_ray.data import load_dataset
from rgm_ray.models.checkpoint import load_checkpoint, save_checkpoint
from rgm_ray.models.gan import GAN, GANConfig, sample_gan
from rgm_ray.models.gan_training import GANTrainConfig, train_gan
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.store import SampleSet, SampleSetWriter, make_table, verify_sample_set
from rgm_ray.weigh import assign_folds, fit_temperature, is_complete, read_crossfit

pytestmark = pytest.mark.ray

N_SAMPLES, GAN_TRAIN_IMAGES, SEED = 64, 96, 2


def _write_set(out: Path, images: np.ndarray) -> Path:
    with SampleSetWriter(out, source="test:gan") as writer:
        writer.write(make_table(np.arange(len(images)), images, None, source="test:gan"))
    return out


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory, fmnist_test):
    """A GAN trained for 6 steps on the first 96 Fashion-MNIST train images (its checkpoint says so)."""
    torch.manual_seed(0)
    model = GAN(GANConfig(in_channels=1, image_size=28, latent_dim=8, base_channels=4))
    config = GANTrainConfig(epochs=1, max_steps=6, batch_size=8, eval_every=6, eval_images=16, checkpoint_every=6,
                            train_images=GAN_TRAIN_IMAGES, grid_images=4, seed=3)
    out = tmp_path_factory.mktemp("gan")
    train_gan(model, load_dataset("fashion-mnist", "train").images, fmnist_test.images[:16], config, out,
              meta={"dataset": "fashion-mnist"})
    return out / "checkpoint"


@pytest.fixture(scope="module")
def samples(tmp_path_factory, gan_ckpt):
    images = sample_gan(load_checkpoint(gan_ckpt), N_SAMPLES, seed=5).numpy()
    return _write_set(tmp_path_factory.mktemp("samples") / "set", images)


@pytest.fixture(scope="module")
def weighed(ray_local, tmp_path_factory, gan_ckpt, samples):
    out = tmp_path_factory.mktemp("weigh") / "out"
    parser = argparse.ArgumentParser()
    cmd_weigh.register(parser.add_subparsers())
    args = parser.parse_args(["weigh", "--real", "fashion-mnist", "--samples", str(samples), "--out", str(out),
                              "--backbone", "gan-discriminator", "--checkpoint", str(gan_ckpt), "--seed", str(SEED),
                              "--batch-size", "16", "--workers", "1", "--no-mlflow"])
    return out, args.handler(args)


def _logits(model: GAN, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.discriminator_logit(torch.from_numpy(images)).numpy()


def test_log_weight_is_the_discriminator_logit_over_its_fold_temperature(weighed, gan_ckpt, fmnist_test):
    out, result = weighed
    model, rows = load_checkpoint(gan_ckpt), SampleSet(out / "weighted").read(["sample_id", "image", "log_weight"])
    folds = assign_folds(rows["sample_id"], seed=SEED, folds=2)
    temperatures = np.array(result.temperatures)
    expected = _logits(model, rows["image"]).astype(np.float64) / temperatures[folds]
    assert np.allclose(rows["log_weight"], expected, rtol=1e-5, atol=1e-5)
    assert result.metrics["scoring_max_abs_diff"] == 0.0  # Ray Data reproduced the driver's held-out logits

    # Each temperature is fitted on every row outside its fold, recomputed here from the model itself.
    crossfit, real_images = read_crossfit(out / "classifier"), load_dataset("fashion-mnist", "train").images
    gen_images = dict(zip(rows["sample_id"].tolist(), rows["image"]))
    for k, temperature in enumerate(result.temperatures):
        real_ids = np.concatenate([crossfit[f"train_real_{k}"], crossfit[f"calib_real_{k}"]])
        gen_ids = np.concatenate([crossfit[f"train_gen_{k}"], crossfit[f"calib_gen_{k}"]])
        assert real_ids.min() >= GAN_TRAIN_IMAGES  # the GAN's training rows never calibrate its discriminator
        logits = np.concatenate([_logits(model, real_images[real_ids]),
                                 _logits(model, np.stack([gen_images[i] for i in gen_ids]))])
        labels = np.r_[np.ones(real_ids.size, bool), np.zeros(gen_ids.size, bool)]
        assert temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-4)
        assert abs(np.log(temperature)) > 0.05  # a real rescaling, not T = 1


def test_outputs_are_those_of_the_classifier_path(weighed):
    out, result = weighed
    assert is_complete(out) and verify_sample_set(out / "weighted") == []
    assert len(SampleSet(out / "weighted")) == N_SAMPLES
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["backbone"]["kind"] == "gan-discriminator" and Path(calibration["backbone"]["path"]).is_absolute()
    assert {"accuracy", "roc_auc", "ece"} <= set(calibration["pooled"]["before"]) & set(calibration["pooled"]["after"])
    assert all(f["best_epoch"] is None and f["train_per_class"] == 0 for f in calibration["per_fold"])
    assert "excluded the 96 real images the GAN's discriminator was trained on" in calibration["notes"]
    assert json.loads((out / "weights_summary.json").read_text())["n"] == N_SAMPLES
    for png in ("reliability.png", "log_weight_hist.png", "ess_vs_alpha.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "classifier" / "weigher.json").read_text())["feature_shape"] == [1]
    assert result.backbone == "gan-discriminator" and "weighed 64 samples" in result.message


def test_wrong_checkpoint_is_refused_in_one_line(tmp_path, gan_ckpt, samples, capsys):
    resnet = save_checkpoint(tmp_path / "resnet", ResNet(ResNetConfig(in_channels=1, num_classes=10), seed=0))
    rgb = str(_write_set(tmp_path / "rgb", np.zeros((8, 3, 32, 32), np.uint8)))
    cases = [(["--real", "fashion-mnist", "--samples", str(samples), "--checkpoint", str(resnet)],
              "a 'resnet' checkpoint, not a GAN"),
             (["--real", rgb, "--samples", rgb, "--checkpoint", str(gan_ckpt)],
              r"the GAN's discriminator takes images of shape (1, 28, 28), but the images to weigh have (3, 32, 32)")]
    for k, (flags, message) in enumerate(cases):
        argv = ["weigh", *flags, "--backbone", "gan-discriminator", "--out", str(tmp_path / f"out{k}"), "--no-mlflow"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0
