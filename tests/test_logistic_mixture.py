"""Discretized logistic mixture: normalisation, edge cases, parameter layout and the noise-driven sampler."""

from __future__ import annotations

import math

import pytest
import torch

from rgm_ray.models import logistic_mixture as lm

K = 3
GRID = lm.to_unit_range(torch.arange(256, dtype=torch.uint8))  # [256] the 256 levels in [-1, 1]


def _params_1ch(logit_pi, means, log_scales) -> torch.Tensor:
    """Pack per-component lists into one [P] vector of the documented 1-channel layout."""
    return torch.tensor([*logit_pi, *means, *log_scales], dtype=torch.float32)


def _all_values_1ch(params: torch.Tensor) -> torch.Tensor:
    """log P(v) for all 256 values of one 1-channel pixel with parameters [P]: returns [256]."""
    x = GRID.view(256, 1, 1, 1)
    return lm.log_prob(x, params.view(1, -1, 1, 1).expand(256, -1, 1, 1)).view(256)


PARAMS_1CH = {
    "random": torch.randn(3 * K, generator=torch.Generator().manual_seed(0)) * 2,
    "peaked_min_scale": _params_1ch([0.0, 1.0, -1.0], [0.3, -0.999, 0.5 + 0.7 / 255], [-7.0, -9.0, -20.0]),
    "means_outside_range": _params_1ch([5.0, -5.0, 0.0], [3.0, -4.0, 1.5], [-6.0, 0.0, -3.0]),
    "very_flat": _params_1ch([0.0, 0.0, 0.0], [0.0, 0.5, -0.5], [6.0, 4.0, 8.0]),
    "dominant_component": _params_1ch([60.0, -60.0, 0.0], [0.0, 1.0, -1.0], [-2.0, -2.0, -2.0]),
}


def test_num_params_layout_sizes():
    assert lm.num_params(1, 10) == 30
    assert lm.num_params(3, 10) == 100
    with pytest.raises(ValueError, match="channels"):
        lm.num_params(2, 10)
    with pytest.raises(ValueError, match="nr_mix"):
        lm.num_params(3, 0)


def test_unit_range_round_trip_and_rounding():
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(lm.to_uint8(lm.to_unit_range(levels)), levels)
    assert GRID[0].item() == -1.0 and GRID[-1].item() == 1.0
    rounded = lm.to_uint8(torch.tensor([-3.0, 2.0, 0.4 / 255 - 1, 1.6 / 255 - 1]))
    assert rounded.tolist() == [0, 255, 0, 1]
    with pytest.raises(ValueError, match="uint8"):
        lm.to_unit_range(torch.zeros(3))


@pytest.mark.parametrize("name", sorted(PARAMS_1CH))
def test_single_channel_probabilities_sum_to_one(name):
    lp = _all_values_1ch(PARAMS_1CH[name])
    assert torch.isfinite(lp).all()
    assert lp.double().exp().sum().item() == pytest.approx(1.0, abs=2e-5)


def test_edge_bins_take_the_whole_tails():
    # A single component centred far left puts (almost) all mass on value 0, none on 255.
    lp = _all_values_1ch(_params_1ch([0.0, -50.0, -50.0], [-5.0, 0.0, 0.0], [-1.0, 0.0, 0.0]))
    assert lp[0].exp().item() == pytest.approx(1.0, abs=1e-4) and lp[255].exp().item() < 1e-6
    # Exactly: log P(0) = log sigmoid((-1 + 1/255 + 5) / e^-1) for that component.
    expected = math.log(torch.sigmoid(torch.tensor((4.0 + 1 / 255) * math.e, dtype=torch.float64)).item())
    assert lp[0].item() == pytest.approx(expected, abs=1e-5)


def test_tiny_bins_use_density_fallback_without_nan_or_inf():
    # The bin probability here underflows float32 CDF differences; the density fallback stays finite
    # and close to the float64 reference.
    params = _params_1ch([0.0] * K, [0.9] * K, [-5.0] * K)  # all components alike: one logistic
    lp = _all_values_1ch(params)
    assert torch.isfinite(lp).all()
    v, mu, s = GRID[100].double(), torch.tensor(0.9, dtype=torch.float64), math.exp(-5.0)
    # log of the exact bin probability in float64, via the logistic log-CDF in the left tail.
    log_cdf = lambda t: torch.nn.functional.logsigmoid((t - mu) / s)  # noqa: E731
    upper, lower = log_cdf(v + 1 / 255), log_cdf(v - 1 / 255)
    exact = (upper + torch.log1p(-torch.exp(lower - upper))).item()
    assert exact < -80  # far below what a float32 CDF difference could represent
    assert lp[100].item() == pytest.approx(exact, rel=0.02)
    assert torch.autograd.functional.jacobian(lambda p: _all_values_1ch(p).sum(), params).isfinite().all()


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_rgb_marginal_over_green_blue_matches_red_only_model(scale):
    """Summing the RGB joint over all 256^2 (G, B) for a fixed R must give the 1-channel model of R.

    With the 1-channel normalisation test this checks the joint sums to one, slice by slice, exactly.
    """
    gen = torch.Generator().manual_seed(1)
    params = torch.randn(10 * K, generator=gen) * scale
    params[7 * K :] *= 5  # strong channel coupling (tanh saturates)
    red_only = torch.cat([params[:K], params[K : 2 * K], params[4 * K : 5 * K]])  # logit_pi, mu_R, log_s_R
    log_p_red = _all_values_1ch(red_only)
    g, b = torch.meshgrid(GRID, GRID, indexing="ij")  # [256,256] each
    for r in (0, 1, 77, 200, 254, 255):
        x = torch.stack([torch.full_like(g, GRID[r].item()), g, b]).unsqueeze(0)  # [1,3,256,256]
        lp = lm.log_prob(x, params.view(1, -1, 1, 1).expand(1, -1, 256, 256))
        assert torch.isfinite(lp).all()
        assert lp.double().exp().sum().item() == pytest.approx(log_p_red[r].exp().item(), rel=1e-4, abs=1e-7)


def test_log_prob_validates_shapes():
    with pytest.raises(ValueError, match="multiple"):
        lm.log_prob(torch.zeros(1, 3, 2, 2), torch.zeros(1, 31, 2, 2))
    with pytest.raises(ValueError, match="disagree"):
        lm.log_prob(torch.zeros(1, 1, 2, 2), torch.zeros(2, 9, 2, 2))


def test_gumbel_max_picks_component_from_mix_noise():
    # Equal logits: the Gumbel key -log(-log u) is monotone in u, so the largest u wins.
    means = [-0.5, 0.0, 0.5]
    params = _params_1ch([0.0] * K, means, [-7.0] * K).expand(4, -1)
    mix_u = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.2], [0.1, 0.2, 0.9], [1.0, 0.0, 0.99]])
    out = lm.sample_pixels(params, mix_u, torch.full((4, 1), 0.5))
    assert out.dtype == torch.uint8 and out.shape == (4, 1)
    assert out[:, 0].tolist() == [lm.to_uint8(torch.tensor(m)).item() for m in (-0.5, 0.0, 0.5, -0.5)]


def test_samples_follow_the_discretized_distribution():
    gen = torch.Generator().manual_seed(3)
    params = _params_1ch([0.0, 1.0, -0.5], [-0.95, 0.1, 0.97], [-3.0, -2.5, -4.0])
    n = 40_000
    mix_u, pix_u = torch.rand(n, K, generator=gen), torch.rand(n, 1, generator=gen)
    out = lm.sample_pixels(params.expand(n, -1), mix_u, pix_u)
    freq = torch.bincount(out[:, 0].long(), minlength=256).double() / n
    total_variation = 0.5 * (freq - _all_values_1ch(params).double().exp()).abs().sum().item()
    assert total_variation < 0.03


def test_rgb_sampling_couples_on_quantised_values():
    """G's mean is coupled to the *quantised* R value, as in training, not to the raw logistic draw."""
    r_raw = GRID[100].item() + 0.9 / 255  # inside bin 100, near its upper edge
    g_base = GRID[50].item() + 0.5 / 255 - GRID[100].item()  # G = bin 50 given quantised R, 51 given raw R
    per_channel = lambda vals: [v for v in vals for _ in range(K)]  # noqa: E731  same for all components
    params = torch.tensor(
        [0.0] * K  # logit_pi
        + per_channel([r_raw, g_base, 0.0])  # means
        + per_channel([-7.0, -7.0, -7.0])  # log-scales
        + per_channel([20.0, 0.0, 0.0])  # alpha = tanh(20) = 1, beta = gamma = 0
    )
    out = lm.sample_pixels(params.unsqueeze(0), torch.full((1, K), 0.5), torch.full((1, 3), 0.5))
    assert out.tolist() == [[100, 50, 128]]


def test_sample_pixels_validates_noise_shapes():
    params = torch.zeros(2, 10 * K)
    with pytest.raises(ValueError, match="noise shapes"):
        lm.sample_pixels(params, torch.rand(2, K + 1), torch.rand(2, 3))
    with pytest.raises(ValueError, match="multiple"):
        lm.sample_pixels(torch.zeros(2, 10 * K + 1), torch.rand(2, K), torch.rand(2, 3))
