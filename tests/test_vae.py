"""Tests for the convolutional VAE: shapes, ELBO/KL maths, seeded sampling, training progress, config."""

from __future__ import annotations

import math

import pytest
import torch

from rgm_ray.data.datasets import load_dataset
from rgm_ray.models.vae import VAE, VAEConfig, kl_to_standard_normal


TINY_GRAY = VAEConfig(in_channels=1, image_size=28, latent_dim=8, base_channels=8)
TINY_RGB = VAEConfig(in_channels=3, image_size=32, latent_dim=8, base_channels=8, nr_mix=2)


def _model(config: VAEConfig, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(config)


def _random_images(config: VAEConfig, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, config.in_channels, config.image_size, config.image_size)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def fashion_batch() -> torch.Tensor:
    return torch.from_numpy(load_dataset("fashion-mnist", "test").images[:64])


@pytest.mark.parametrize("config", [TINY_GRAY, TINY_RGB], ids=["1x28x28", "3x32x32"])
def test_shapes_and_untrained_scale(config: VAEConfig) -> None:
    model = _model(config)
    x = _random_images(config, 5)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (5, config.latent_dim)
    params = model.decode(mean)
    per_component = 3 if config.in_channels == 1 else 10
    assert params.shape == (5, per_component * config.nr_mix, config.image_size, config.image_size)

    elbo = model.elbo(x, generator=torch.Generator().manual_seed(1))
    assert elbo.shape == (5,) and torch.isfinite(elbo).all() and (elbo < 0).all()
    # Uniform noise images under an untrained model cost roughly 8 bits per dim (256 levels).
    assert 6.0 < model.loss(x).item() < 12.0

    for images in (model.sample(3, seed=0), model.sample(3, seed=0, mode="sample"), model.reconstruct(x)):
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (config.in_channels, config.image_size, config.image_size)


def test_kl_matches_torch_distributions_and_is_nonnegative() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(6, 5, generator=g) * 2, torch.randn(6, 5, generator=g)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected)
    assert (kl_to_standard_normal(mean, logvar) >= 0).all()
    assert kl_to_standard_normal(torch.zeros(2, 5), torch.zeros(2, 5)).abs().max() == 0


def test_elbo_estimates_are_finite_bounded_and_generator_deterministic(fashion_batch: torch.Tensor) -> None:
    model = _model(TINY_GRAY)
    x = fashion_batch[:1].expand(200, -1, -1, -1)  # one image, 200 independent posterior draws
    with torch.no_grad():
        draws = model.elbo(x, generator=torch.Generator().manual_seed(0))
        again = model.elbo(x, generator=torch.Generator().manual_seed(0))
        other = model.elbo(x, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(draws).all() and draws.std() > 0
    torch.testing.assert_close(draws, again, rtol=0, atol=0)
    assert not torch.equal(draws, other)
    # Log-likelihood of discrete data is <= 0; so is any lower bound on it (IWAE-style mean included).
    assert draws.mean() < 0 and torch.logsumexp(draws, 0) - math.log(len(draws)) < 0


def test_sampling_is_seeded_and_batch_size_independent() -> None:
    model = _model(TINY_RGB)
    model.train()
    for mode in ("mean", "sample"):
        a = model.sample(7, seed=3, mode=mode)
        torch.testing.assert_close(a, model.sample(7, seed=3, mode=mode), rtol=0, atol=0)
        torch.testing.assert_close(a, model.sample(7, seed=3, batch_size=2, mode=mode), rtol=0, atol=0)
        assert not torch.equal(a, model.sample(7, seed=4, mode=mode))
    assert model.training  # sampling restores the previous mode
    assert not torch.equal(model.sample(7, seed=3), model.sample(7, seed=3, mode="sample"))
    assert model.sample(0, seed=3).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        model.sample(2, seed=0, mode="median")
    with pytest.raises(ValueError, match="batch_size"):
        model.sample(2, seed=0, batch_size=0)


def test_training_on_real_images_reduces_loss(fashion_batch: torch.Tensor) -> None:
    model = _model(VAEConfig(in_channels=1, image_size=28, latent_dim=8, base_channels=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def bits_per_dim() -> float:  # same posterior noise before and after training
        with torch.no_grad():
            nats = -model.elbo(fashion_batch, generator=torch.Generator().manual_seed(0)).mean().item()
        return nats / (28 * 28 * math.log(2.0))

    before = bits_per_dim()
    for _ in range(40):
        loss = model.loss(fashion_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = bits_per_dim()
    assert after < before - 0.5, (before, after)
    # Reconstructions must carry per-image information: beat the batch's average image.
    real = fashion_batch.float()
    recon_error = (model.reconstruct(fashion_batch).float() - real).abs().mean()
    assert recon_error < (real - real.mean(0)).abs().mean()


def test_config_round_trip_and_validation() -> None:
    config = VAEConfig(in_channels=1, image_size=28, latent_dim=16, base_channels=8, nr_mix=3)
    assert VAEConfig.from_dict(config.to_dict()) == config
    assert VAE(config).config == config and VAE.kind == "vae"
    with pytest.raises(ValueError, match="unknown VAEConfig keys.*'latent'"):
        VAEConfig.from_dict({**config.to_dict(), "latent": 3})
    for bad in ({"image_size": 30}, {"in_channels": 2}, {"latent_dim": 0}, {"base_channels": -1},
                {"nr_mix": 1.5}, {"latent_dim": True}):
        with pytest.raises(ValueError, match="VAEConfig"):
            VAEConfig(**bad)
    model = VAE(config)
    with pytest.raises(ValueError, match="uint8"):
        model.elbo(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="uint8"):
        model.elbo(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
