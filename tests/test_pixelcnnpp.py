"""PixelCNN++: config, shapes, causality, likelihood, training on real data and the naive sampler."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from rgm_ray.data import load_dataset
from rgm_ray.models import logistic_mixture as lm
from rgm_ray.models import pixelcnnpp
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig, bits_per_dim
from rgm_ray.models.pixelcnnpp_layers import DownRightShiftedConvTranspose2d, DownShiftedConvTranspose2d
from rgm_ray.models.pixelcnnpp_noise import draw_sampling_noise
from rgm_ray.models.pixelcnnpp_sampling import SAMPLERS, sample_naive, sample_pixelcnnpp




def tiny_config(channels: int = 3, size: int = 12, **overrides) -> PixelCNNppConfig:
    base = dict(nr_resnet=1, nr_filters=8, nr_logistic_mix=3, dropout=0.0)
    return PixelCNNppConfig(in_channels=channels, image_size=size, **{**base, **overrides})


def tiny_model(channels: int = 3, size: int = 12, seed: int = 0, **overrides) -> PixelCNNpp:
    torch.manual_seed(seed)  # weight init only; the code under test takes no global randomness
    return PixelCNNpp(tiny_config(channels, size, **overrides))


# --- config --------------------------------------------------------------------------------------


def test_config_json_round_trip_and_defaults():
    cfg = PixelCNNppConfig(
        in_channels=1, image_size=28, nr_resnet=2, nr_filters=16, nr_logistic_mix=5, dropout=0.1
    )
    assert PixelCNNppConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PixelCNNppConfig().to_dict() == dict(
        in_channels=3, image_size=32, nr_resnet=5, nr_filters=160, nr_logistic_mix=10, dropout=0.5
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(image_size=30), "divisible by 4"),
        (dict(in_channels=2), "1 or 3"),
        (dict(nr_filters=0), "positive int"),
        (dict(nr_resnet=2.0), "positive int"),
        (dict(nr_logistic_mix=True), "positive int"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
    ],
)
def test_config_rejects_invalid_values(bad, message):
    with pytest.raises(ValueError, match=message):
        PixelCNNppConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown PixelCNNppConfig keys \['nr_filter'\]"):
        PixelCNNppConfig.from_dict({"nr_filter": 8})


# --- network -------------------------------------------------------------------------------------


def test_paper_config_has_about_53m_parameters():
    model = PixelCNNpp(PixelCNNppConfig())
    assert model.kind == "pixelcnnpp"
    assert 52e6 < sum(p.numel() for p in model.parameters()) < 55e6


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 12)])
def test_forward_shape_and_finite_log_prob(channels, size):
    model = tiny_model(channels, size)
    x = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)
    params = model(lm.to_unit_range(x))
    assert params.shape == (2, lm.num_params(channels, 3), size, size)
    log_p = model.log_prob(x)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()


def test_untrained_model_gives_about_eight_bits_per_dim_on_uniform_noise():
    model = tiny_model(3, 12).eval()
    x = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bpd = model.loss(x).item()
    assert 7.0 < bpd < 10.0


def test_loss_is_mean_bits_per_dim_of_log_prob():
    model = tiny_model(1, 8).eval()
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = (-model.log_prob(x) / (64 * math.log(2))).mean()
        assert torch.allclose(model.loss(x), expected)
    assert bits_per_dim(torch.tensor([-64 * math.log(2)]), 64).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(torch.zeros(1), 0)


def test_input_validation():
    model = tiny_model(3, 8)
    with pytest.raises(ValueError, match=r"\[B,3,8,8\]"):
        model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        model.log_prob(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize(
    "layer, kernel", [(DownShiftedConvTranspose2d, (2, 3)), (DownRightShiftedConvTranspose2d, (2, 2))]
)
@pytest.mark.parametrize("size", [3, 7, 8])
def test_transposed_convs_double_the_size_exactly(layer, kernel, size):
    assert layer(4, 5, kernel)(torch.zeros(2, 4, size, size + 1)).shape == (2, 5, 2 * size, 2 * size + 2)


@pytest.mark.parametrize("channels, size", [(1, 8), (3, 8), (1, 12), (3, 12)])
def test_network_is_causal_in_raster_order(channels, size):
    """d out(i,j) / d x(i',j') must vanish for every channel at (i,j) and every later position."""
    model = tiny_model(channels, size, dropout=0.5).train()  # dropout on: causality must not depend on it
    x = torch.rand(1, channels, size, size, requires_grad=True) * 2 - 1
    params = model(x)
    raster = torch.arange(size * size).view(size, size)
    for i in range(size):
        for j in range(size):
            (grad,) = torch.autograd.grad(params[0, :, i, j].sum(), x, retain_graph=True)
            influence = grad[0].abs().sum(dim=0)  # [H,W]
            future = raster >= i * size + j
            assert influence[future].max().item() == 0.0, f"position ({i},{j}) sees the future"
            # Not vacuous: the pixel to the left and the row above do influence it.
            if j > 0:
                assert influence[i, j - 1] > 0
            if i > 0:
                assert influence[i - 1, j] > 0 and influence[i - 1, min(j + 1, size - 1)] > 0


# --- training ------------------------------------------------------------------------------------


def test_loss_falls_on_real_fashion_mnist():
    images = torch.from_numpy(load_dataset("fashion-mnist", "test").images[:16])
    assert images.shape == (16, 1, 28, 28) and images.dtype == torch.uint8
    model = tiny_model(1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.loss(images)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.8, losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.6


# --- sampling ------------------------------------------------------------------------------------


def test_sampling_noise_contract():
    cfg = tiny_config(3, 8)
    mix_u, pix_u = draw_sampling_noise(3, cfg, seed=7)
    assert mix_u.shape == (3, 8, 8, 3) and pix_u.shape == (3, 8, 8, 3)
    # Image j's noise is its own stream, whatever else is drawn in the call.
    later_mix, later_pix = draw_sampling_noise(1, cfg, seed=7, first_index=2)
    assert torch.equal(later_mix[0], mix_u[2]) and torch.equal(later_pix[0], pix_u[2])
    assert not torch.equal(mix_u[0], mix_u[1])


def test_samples_deterministic_batch_independent_and_mode_restored():
    model = tiny_model(3, 8, dropout=0.5).train()
    first = sample_pixelcnnpp(model, 3, seed=11, batch_size=3)
    assert model.training, "sampling must restore the training mode"
    assert first.dtype == torch.uint8 and first.shape == (3, 3, 8, 8)
    assert torch.equal(first, sample_pixelcnnpp(model, 3, seed=11, batch_size=1))
    assert not torch.equal(first, sample_pixelcnnpp(model, 3, seed=12, batch_size=3))
    assert len(torch.unique(first)) > 10, "samples should not collapse to a constant"


def test_naive_samples_are_consistent_with_the_network_and_the_noise():
    """Teacher-forcing the finished samples reproduces them: each pixel is the mixture draw, from its
    own noise, under the parameters the network gives for the pixels before it."""
    model = tiny_model(3, 8).eval()
    images = sample_pixelcnnpp(model, 2, seed=3)
    mix_u, pix_u = draw_sampling_noise(2, model.config, seed=3)
    with torch.no_grad():
        params = model(lm.to_unit_range(images))  # [B,P,H,W]
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  [B,H,W,D] -> [B*H*W, D]
    redrawn = lm.sample_pixels(flat(params.permute(0, 2, 3, 1)), flat(mix_u), flat(pix_u))
    assert torch.equal(redrawn, flat(images.permute(0, 2, 3, 1)))


def test_single_channel_sampling_and_unknown_sampler():
    model = tiny_model(1, 8)
    assert sample_pixelcnnpp(model, 2, seed=0, batch_size=2).shape == (2, 1, 8, 8)
    assert "naive" in SAMPLERS and SAMPLERS["naive"] is sample_naive
    with pytest.raises(ValueError, match=r"known samplers: \['cached', 'naive'\]"):
        sample_pixelcnnpp(model, 1, seed=0, sampler="cached-typo")
    with pytest.raises(ValueError, match="do not fit"):
        sample_naive(model, torch.rand(1, 8, 8, 4), torch.rand(1, 8, 8, 1))


def test_the_network_module_imports_no_sampler():
    """Sampling sits on top of the network: ``pixelcnnpp`` imports none of its samplers, not even lazily."""
    tree = ast.parse(Path(pixelcnnpp.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.startswith("rgm_ray.models.pixelcnnpp_")} - {
        "rgm_ray.models.pixelcnnpp_layers"}
