"""The GAN family: shapes of both variants, learning on real Fashion-MNIST, checkpoints, exact resume, the sampler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rgm_ray.cli.main import main
from rgm_ray.models.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from rgm_ray.models.gan import GAN, GANConfig, sample_gan, to_signed_unit, to_uint8
from rgm_ray.models.gan_training import (KEY_D_LOSS, KEY_FID, KEY_FID_FEATURES, GANTrainConfig, train_gan)
from rgm_ray.models.resnet import ResNet, ResNetConfig

TIMING_KEYS = ("train_seconds", "train_images_per_sec")


def _gan(**kw) -> GAN:
    torch.manual_seed(0)  # identical initial weights for every model built with the same config
    return GAN(GANConfig(**{"in_channels": 1, "image_size": 28, "latent_dim": 8, "base_channels": 4, **kw}))


def _config(**kw) -> GANTrainConfig:
    base = dict(epochs=1, max_steps=6, batch_size=8, eval_every=3, eval_images=16, checkpoint_every=3,
                train_images=96, grid_images=4, seed=3)
    return GANTrainConfig(**{**base, **kw})


@pytest.mark.parametrize(("channels", "size", "loss", "sn"), [(1, 28, "nonsaturating", False), (3, 32, "hinge", True)])
def test_shapes_losses_and_gradients(channels, size, loss, sn):
    model = _gan(in_channels=channels, image_size=size, loss=loss, spectral_norm=sn)
    fake = model.generate(torch.randn(5, 8))
    assert fake.shape == (5, channels, size, size) and fake.abs().max() <= 1
    x = torch.randint(0, 256, (5, channels, size, size), dtype=torch.uint8)
    real_logits = model.discriminator_logit(x)
    assert real_logits.shape == (5,)
    d_loss = model.discriminator_loss(real_logits, model.discriminator(fake.detach()))
    g_loss = model.generator_loss(model.discriminator(fake))
    assert d_loss.ndim == g_loss.ndim == 0 and torch.isfinite(d_loss) and torch.isfinite(g_loss)
    g_loss.backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    assert any(name.endswith("parametrizations.weight.original") for name, _ in model.named_parameters()) == sn
    with pytest.raises(ValueError, match=rf"expected uint8 images \[B,{channels},{size},{size}\]"):
        model.discriminator_logit(x.float())


def test_config_is_strict():
    assert GANConfig.from_dict(GANConfig().to_dict()) == GANConfig()
    with pytest.raises(ValueError, match="unknown GANConfig keys"):
        GANConfig.from_dict({"latent": 3})
    for bad in ({"image_size": 64}, {"in_channels": 2}, {"loss": "wasserstein"}, {"spectral_norm": 1},
                {"latent_dim": 0}):
        with pytest.raises(ValueError, match="GANConfig"):
            GANConfig.from_dict(bad)
    with pytest.raises(ValueError, match="discriminator_steps"):
        GANTrainConfig(discriminator_steps=0)


def test_pixel_mapping_round_trips():
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_signed_unit(x)), x)


def test_sampler_is_deterministic_and_batch_size_independent():
    model = _gan(spectral_norm=True, loss="hinge")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = sample_gan(model, 7, seed=5, batch_size=7)
    assert images.dtype == torch.uint8 and images.shape == (7, 1, 28, 28) and model.training
    for batch_size in (1, 3):
        assert torch.equal(images, sample_gan(model, 7, seed=5, batch_size=batch_size))
    assert torch.equal(images[:4], sample_gan(model, 4, seed=5))  # image j from (seed, j) only
    assert not torch.equal(images, sample_gan(model, 7, seed=6))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode: no statistics moved
    assert sample_gan(model, 0, seed=5).shape == (0, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown GAN sampler"):
        sample_gan(model, 1, seed=0, sampler="mean")


def _discriminator_auc(model: GAN, real: np.ndarray) -> float:
    """P(logit of a held-out real image > logit of a fresh sample): 0.5 for a discriminator that cannot tell."""
    with torch.no_grad():
        r = model.discriminator_logit(torch.from_numpy(real))
        f = model.discriminator_logit(sample_gan(model, len(real), seed=11))
    return float((r[:, None] > f[None, :]).float().mean())


def _mean_image_gap(model: GAN, real: np.ndarray) -> float:
    """Mean absolute difference (in pixel levels) between the average sample and the average real image."""
    fake = sample_gan(model, len(real), seed=11).float()
    return float((fake.mean(0) - torch.from_numpy(real).float().mean(0)).abs().mean())


def test_training_on_real_images_learns(tmp_path, fmnist_test):
    images, held_out = fmnist_test.images[:4000], fmnist_test.images[-256:]
    model = _gan(latent_dim=32, base_channels=16)
    auc, gap = _discriminator_auc(model, held_out), _mean_image_gap(model, held_out)
    summary = train_gan(model, images, held_out, _config(max_steps=60, batch_size=32, eval_every=60,
                                                         checkpoint_every=60, train_images=None), tmp_path, meta={})
    # The discriminator learns to tell held-out real images from samples, and the samples move towards the data.
    assert auc < 0.7 and _discriminator_auc(model, held_out) > 0.85
    assert _mean_image_gap(model, held_out) < 0.8 * gap
    assert summary[KEY_D_LOSS] < math.log(4)  # an uninformed discriminator's -log(1/2) - log(1/2)
    assert summary["steps"] == 60 and summary[KEY_FID] is None and summary[KEY_FID_FEATURES].startswith("skipped")


def test_checkpoint_round_trips_and_resume_is_exact(tmp_path, fmnist_test):
    images = fmnist_test.images
    domain = save_checkpoint(tmp_path / "domain", ResNet(ResNetConfig(in_channels=1, num_classes=10), seed=0))
    config = dict(spectral_norm=True, loss="hinge")  # power-iteration buffers must resume too
    train_config = _config(discriminator_steps=2, fid_domain_checkpoint=str(domain))
    straight = _gan(**config)
    summary = train_gan(straight, images, images[:16], train_config, tmp_path / "a", meta={"dataset": "x"})
    interrupted = _gan(**config)
    train_gan(interrupted, images, images[:16], _config(max_steps=3, discriminator_steps=2,
                                                        fid_domain_checkpoint=str(domain)), tmp_path / "b", meta={})
    resumed = _gan(**config)
    resumed_summary = train_gan(resumed, images, images[:16], train_config, tmp_path / "b", meta={})
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(summary) == strip(resumed_summary) and np.isfinite(summary[KEY_FID])
    assert "domain ResNet" in summary[KEY_FID_FEATURES]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["steps"] == 6
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "a" / "grids").iterdir()) == ["step_0000003.png", "step_0000006.png"]

    loaded = load_checkpoint(tmp_path / "a" / "checkpoint")  # weights_only=True
    assert isinstance(loaded, GAN) and loaded.config == straight.config and not loaded.training
    assert torch.equal(sample_gan(loaded, 3, seed=1), sample_gan(straight, 3, seed=1))
    state = load_trainer_state(tmp_path / "a" / "checkpoint")
    assert state["step"] == 6 and set(state["optimizer"]) == {"generator", "discriminator"}
    with pytest.raises(ValueError, match="different configuration"):
        train_gan(_gan(**config), images, images[:16], _config(max_steps=9, lr=1e-3), tmp_path / "a", meta={})


def test_cli_train_gan_tiny(tmp_path, tracking_uri, capsys):
    assert main(["train", "gan", "--preset", "tiny", "--out", str(tmp_path / "run"), "--max-steps", "4",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["family"] == "gan" and summary[KEY_FID] is None
    assert isinstance(load_checkpoint(summary["checkpoint"]), GAN)
    import mlflow

    runs = mlflow.search_runs(experiment_names=["rgm_ray"])
    assert runs["params.model"].tolist() == ["gan"] and runs[f"metrics.{KEY_D_LOSS}"].notna().all()
