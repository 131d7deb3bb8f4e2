"""Discretized logistic mixture likelihood over 8-bit pixels (Salimans et al. 2017, PixelCNN++).

Pixel values live on the 256-level grid ``v_i = 2 i / 255 - 1`` in ``[-1, 1]``; value ``v_i`` owns the
bin ``[v_i - 1/255, v_i + 1/255]`` of a continuous logistic mixture, and the two edge bins extend to
``-inf`` / ``+inf`` so the 256 probabilities sum to one exactly.

For RGB the mixture component is shared by the three channels and the channel means are coupled
linearly to the preceding channels' values (``mu_G + alpha x_R``, ``mu_B + beta x_R + gamma x_G``),
so one pixel's distribution is an autoregressive R -> G -> B model with ``K`` components.

Parameter layout along the channel dimension ``P`` (``K`` = number of mixture components;
channel-major, i.e. index ``offset + c * K + k`` holds channel ``c`` of component ``k``)::

    [0,        K)          logit_pi          mixture logits (shared by all channels)
    [K,        K + C K)    mu[c, k]          logistic means
    [K + C K,  K + 2 C K)  log_s[c, k]       logistic log-scales (clamped below at -7)
    [K + 2 C K, 10 K)      coeff[j, k]       C = 3 only: raw alpha, beta, gamma (squashed by tanh)

so ``num_params(1, K) == 3 K`` and ``num_params(3, K) == 10 K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_SCALE_MIN = -7.0
HALF_BIN = 1.0 / 255.0
# Below this bin probability float32 CDF differences lose their relative precision; the
# density at the bin centre times the bin width is used instead (as in the paper's code).
_MIN_BIN_PROB = 1e-5
_LOG_HALF_LEVELS = math.log(127.5)  # -log(bin width 2/255)
_GUMBEL_EPS = 1e-5
_SUPPORTED_CHANNELS = (1, 3)


def num_params(channels: int, nr_mix: int) -> int:
    """Number of mixture parameters per pixel for ``channels`` in {1, 3} and ``nr_mix`` components."""
    _check_channels(channels)
    if nr_mix < 1:
        raise ValueError(f"nr_mix must be >= 1, got {nr_mix}")
    return 3 * nr_mix if channels == 1 else 10 * nr_mix


def to_unit_range(x_uint8: Tensor) -> Tensor:
    """Map uint8 pixel values 0..255 to the float grid in [-1, 1]."""
    if x_uint8.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 tensor, got {x_uint8.dtype}")
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Map floats in [-1, 1] to the nearest of the 256 levels, as uint8 (out-of-range values clamp)."""
    return torch.round((x + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)


def log_prob(x: Tensor, params: Tensor) -> Tensor:
    """Per-pixel log-probability (nats, summed over channels) of grid values ``x`` [B,C,H,W].

    ``params`` is [B,P,H,W] in the layout described in the module docstring; returns [B,H,W].
    """
    if x.dim() != 4 or params.dim() != 4:
        raise ValueError(
            f"x and params must be 4-D [B,C,H,W] / [B,P,H,W], got {tuple(x.shape)}, {tuple(params.shape)}"
        )
    channels = x.shape[1]
    nr_mix = _nr_mix_from(params.shape[1], channels)
    if x.shape[0] != params.shape[0] or x.shape[2:] != params.shape[2:]:
        raise ValueError(
            f"x {tuple(x.shape)} and params {tuple(params.shape)} disagree on batch or spatial size"
        )

    # Move the parameter axis last so the shared helpers work on [..., P]: [B,H,W,P].
    logit_pi, means, log_scales, coeffs = _split(params.permute(0, 2, 3, 1), channels, nr_mix)
    x = x.permute(0, 2, 3, 1).unsqueeze(-1)  # [B,H,W,C,1], broadcasts over components
    if channels == 3:
        means = _coupled_means(means, coeffs, x[..., 0, :], x[..., 1, :])
    log_probs = _discretized_logistic_log_prob(x, means, log_scales)  # [B,H,W,C,K]
    return torch.logsumexp(log_probs.sum(dim=-2) + F.log_softmax(logit_pi, dim=-1), dim=-1)


def sample_pixels(params: Tensor, mix_u: Tensor, pix_u: Tensor) -> Tensor:
    """Draw one pixel per row of ``params`` [N,P] from explicit uniform noise; returns uint8 [N,C].

    ``mix_u`` [N,K] picks the component by the Gumbel-max trick; ``pix_u`` [N,C] drives the
    inverse-CDF logistic draw of each channel in R, G, B order. Each channel is quantised to the
    256-level grid before it enters the coupling of later channels, because the model was trained
    on (and conditions on) discrete values.
    """
    if params.dim() != 2 or mix_u.dim() != 2 or pix_u.dim() != 2:
        raise ValueError("params, mix_u and pix_u must be 2-D: [N,P], [N,K], [N,C]")
    channels = pix_u.shape[1]
    nr_mix = _nr_mix_from(params.shape[1], channels)
    if mix_u.shape != (params.shape[0], nr_mix) or pix_u.shape[0] != params.shape[0]:
        raise ValueError(
            f"noise shapes {tuple(mix_u.shape)}, {tuple(pix_u.shape)} do not match "
            f"params {tuple(params.shape)} (expected [N,{nr_mix}] and [N,{channels}])"
        )
    logit_pi, means, log_scales, coeffs = _split(params, channels, nr_mix)
    mix_u = mix_u.to(params).clamp(_GUMBEL_EPS, 1.0 - _GUMBEL_EPS)
    pix_u = pix_u.to(params).clamp(_GUMBEL_EPS, 1.0 - _GUMBEL_EPS)

    component = torch.argmax(logit_pi - torch.log(-torch.log(mix_u)), dim=-1, keepdim=True)  # [N,1]

    def pick(t: Tensor) -> Tensor:  # [N,K] -> [N] at the chosen component
        return t.gather(-1, component).squeeze(-1)

    values: list[Tensor] = []  # quantised channel values in [-1, 1], each [N]
    for c in range(channels):
        mu = pick(means[:, c])
        if c == 1:
            mu = mu + pick(coeffs[:, 0]) * values[0]
        elif c == 2:
            mu = mu + pick(coeffs[:, 1]) * values[0] + pick(coeffs[:, 2]) * values[1]
        u = pix_u[:, c]
        draw = mu + torch.exp(pick(log_scales[:, c])) * (torch.log(u) - torch.log1p(-u))
        values.append(to_unit_range(to_uint8(draw.clamp(-1.0, 1.0))).to(params))
    return to_uint8(torch.stack(values, dim=-1))


def _check_channels(channels: int) -> None:
    if channels not in _SUPPORTED_CHANNELS:
        raise ValueError(f"channels must be one of {_SUPPORTED_CHANNELS}, got {channels}")


def _nr_mix_from(num_p: int, channels: int) -> int:
    _check_channels(channels)
    per_component = 3 if channels == 1 else 10
    if num_p % per_component or num_p == 0:
        raise ValueError(f"{num_p} parameters is not a multiple of {per_component} (channels={channels})")
    return num_p // per_component


def _split(params: Tensor, channels: int, nr_mix: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Split [..., P] into logit_pi [...,K], means [...,C,K], clamped log_scales [...,C,K]
    and (RGB only) tanh-squashed coupling coefficients [...,3,K]."""
    lead = params.shape[:-1]
    k, ck = nr_mix, channels * nr_mix
    logit_pi = params[..., :k]
    means = params[..., k : k + ck].reshape(*lead, channels, k)
    log_scales = params[..., k + ck : k + 2 * ck].reshape(*lead, channels, k).clamp(min=LOG_SCALE_MIN)
    coeffs = torch.tanh(params[..., k + 2 * ck :].reshape(*lead, 3, k)) if channels == 3 else None
    return logit_pi, means, log_scales, coeffs


def _coupled_means(means: Tensor, coeffs: Tensor, x_r: Tensor, x_g: Tensor) -> Tensor:
    """Means [...,3,K] with G and B shifted by the observed R (and G) values [...,1]."""
    mean_g = means[..., 1, :] + coeffs[..., 0, :] * x_r
    mean_b = means[..., 2, :] + coeffs[..., 1, :] * x_r + coeffs[..., 2, :] * x_g
    return torch.stack([means[..., 0, :], mean_g, mean_b], dim=-2)


def _discretized_logistic_log_prob(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(bin of x) under Logistic(means, exp(log_scales)), elementwise with broadcasting."""
    centered = x - means
    inv_scale = torch.exp(-log_scales)
    upper = inv_scale * (centered + HALF_BIN)
    lower = inv_scale * (centered - HALF_BIN)
    mid = inv_scale * centered

    log_cdf_upper = -F.softplus(-upper)  # log sigmoid(upper): the whole left edge bin
    log_sf_lower = -F.softplus(lower)  # log(1 - sigmoid(lower)): the whole right edge bin
    # Subtract in whichever tail keeps the two sigmoids small, so right-tail bins keep precision.
    bin_prob = torch.where(
        mid > 0, torch.sigmoid(-lower) - torch.sigmoid(-upper), torch.sigmoid(upper) - torch.sigmoid(lower)
    )
    log_bin = torch.log(bin_prob.clamp(min=1e-12))
    log_density_mid = mid - log_scales - 2.0 * F.softplus(mid)  # log pdf of the logistic at x
    log_interior = torch.where(bin_prob > _MIN_BIN_PROB, log_bin, log_density_mid - _LOG_HALF_LEVELS)

    # The grid spacing is 2/255 ~ 0.0078, so +-0.999 separates the edge values from the rest.
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_interior))
