"""Drawing images from a PixelCNN++: the sampler table, the naive sampler and the batched entry point.

The network (``pixelcnnpp``) knows nothing about sampling; this module imports it and both samplers,
the naive one here and the cached one (``pixelcnnpp_cached``). Both consume ``draw_sampling_noise``
identically (``pixelcnnpp_noise``), so they give the same images for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rgm_ray.models import logistic_mixture as lm
from rgm_ray.models.pixelcnnpp import PixelCNNpp, eval_no_grad
from rgm_ray.models.pixelcnnpp_cached import sample_cached
from rgm_ray.models.pixelcnnpp_noise import check_noise, draw_sampling_noise
from rgm_ray.progress import progress as show  # its argument ``progress`` is a switch

DEFAULT_BATCH_SIZE = 64


def sample_naive(model: PixelCNNpp, mix_u: Tensor, pix_u: Tensor, *, progress: bool = False) -> Tensor:
    """Reference sampler: one full forward pass per pixel position in raster order.

    ``mix_u`` [B,H,W,K] and ``pix_u`` [B,H,W,C] come from ``draw_sampling_noise``; returns uint8
    [B,C,H,W] on the model's device. Costs H*W full passes, which is what cached sampling avoids.
    """
    check_noise(model, mix_u, pix_u)
    device = model.device
    mix_u, pix_u = mix_u.to(device), pix_u.to(device)
    batch, size, channels = mix_u.shape[0], model.config.image_size, model.config.in_channels
    positions = [(i, j) for i in range(size) for j in range(size)]
    with eval_no_grad(model):
        dtype = next(model.parameters()).dtype  # a float64 model samples in float64 (see pixelcnnpp_cached)
        # Unfilled pixels have no influence.
        canvas = torch.zeros(batch, channels, size, size, device=device, dtype=dtype)
        for i, j in show(positions, disable=not progress, desc="naive sampling", unit="px"):
            params = model(canvas)[:, :, i, j]  # [B,P]
            pixel = lm.sample_pixels(params, mix_u[:, i, j], pix_u[:, i, j])  # uint8 [B,C]
            canvas[:, :, i, j] = lm.to_unit_range(pixel)
    return lm.to_uint8(canvas)


# A sampler maps (model, mix_u, pix_u, *, progress) to uint8 images; all consume noise identically.
Sampler = Callable[..., Tensor]
SAMPLERS: dict[str, Sampler] = {"cached": sample_cached, "naive": sample_naive}  # the first is the default


def sample_pixelcnnpp(
    model: PixelCNNpp, n: int, *, seed: int, batch_size: int = DEFAULT_BATCH_SIZE, sampler: str = "cached",
    progress: bool = False,
) -> Tensor:
    """Draw ``n`` images as uint8 [n,C,H,W] on the CPU; image j depends only on (seed, j)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {sorted(SAMPLERS)}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    batches = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        mix_u, pix_u = draw_sampling_noise(count, model.config, seed, first_index=start)
        batches.append(SAMPLERS[sampler](model, mix_u, pix_u, progress=progress).cpu())
    return torch.cat(batches)
