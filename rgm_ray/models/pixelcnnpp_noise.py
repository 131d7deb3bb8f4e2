"""The noise every PixelCNN++ sampler consumes, and the check that noise fits a model.

A sampler is a function ``(model, mix_u, pix_u, *, progress) -> uint8 images [B,C,H,W]`` fed by
``draw_sampling_noise``. Every sampler consumes that noise in the same way, so different samplers
(naive, cached) give identical images for the same seed, and image ``j`` of a call depends only on
``(seed, j)``, not on the batch size. It sits below every sampler, so no sampler imports another.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.seeding import torch_generator


def draw_sampling_noise(
    n: int, config: PixelCNNppConfig, seed: int, *, first_index: int = 0
) -> tuple[Tensor, Tensor]:
    """The uniform noise every sampler consumes, for images ``first_index .. first_index + n - 1``.

    Image j draws from ``torch_generator(seed, j)`` first ``mix_u`` [H,W,K] (component choice), then
    ``pix_u`` [H,W,C] (logistic draws). Returns CPU tensors ``mix_u`` [n,H,W,K] and ``pix_u`` [n,H,W,C].
    """
    s, k, c = config.image_size, config.nr_logistic_mix, config.in_channels
    mix, pix = [], []
    for j in range(first_index, first_index + n):
        gen = torch_generator(seed, j)
        mix.append(torch.rand(s, s, k, generator=gen))
        pix.append(torch.rand(s, s, c, generator=gen))
    return torch.stack(mix), torch.stack(pix)


def check_noise(model: PixelCNNpp, mix_u: Tensor, pix_u: Tensor) -> None:
    """Raise ValueError unless the noise has the shapes ``draw_sampling_noise`` gives for this model."""
    cfg = model.config
    s = cfg.image_size
    if mix_u.dim() != 4 or pix_u.dim() != 4 or mix_u.shape[0] != pix_u.shape[0]:
        raise ValueError(
            f"mix_u and pix_u must be [B,H,W,K] and [B,H,W,C], got {tuple(mix_u.shape)}, {tuple(pix_u.shape)}"
        )
    expected_mix, expected_pix = (s, s, cfg.nr_logistic_mix), (s, s, cfg.in_channels)
    if tuple(mix_u.shape[1:]) != expected_mix or tuple(pix_u.shape[1:]) != expected_pix:
        raise ValueError(
            f"noise shapes {tuple(mix_u.shape)}, {tuple(pix_u.shape)} do not fit the model "
            f"(expected [B,{s},{s},{cfg.nr_logistic_mix}] and [B,{s},{s},{cfg.in_channels}])"
        )
