"""The per-fold real-vs-generated heads and their training loop.

``MLPHead`` is the thesis/LFIW estimator on frozen features: dense ``hidden`` (1000 in the thesis) ->
ReLU -> 1 logit, with the training features' mean and scale baked in as buffers (Inception and
domain features live on very different scales). ``ConvHead`` is the ``cnn`` backbone's classifier,
trained end to end on the pixels. ``LogitHead`` has no parameters and is never trained: the
``gan-discriminator`` backbone's one feature already is the logit. All output one logit per image,
``[B]``, label 1 = real.

Training is mini-batch BCE with Adam; the epoch with the lowest loss on the
calibration slice is kept (LFIW kept the best-validation checkpoint too). All randomness -- initial
weights and shuffling -- comes from explicit generators keyed by ``(seed, fold, ...)``; there is no
dropout or batch norm, so eval and train mode compute the same function.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from rgm_ray.models.resnet import preprocess
from rgm_ray.seeding import torch_generator
from rgm_ray.weigh.backbones import CNN, GAN_DISCRIMINATOR
from rgm_ray.weigh.features import apply_in_chunks

_STREAM_INIT, _STREAM_SHUFFLE = 0, 1


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 1000  # MLP head width (thesis: 1000)
    conv_width: int = 32  # ConvHead channels in its first layer (cnn backbone)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hidden", "conv_width", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"head.{name} must be a positive int, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"head: lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeadConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown head config key(s) {unknown}")
        return cls(**d)


class MLPHead(nn.Module):
    """Standardise -> Linear(d, hidden) -> ReLU -> Linear(hidden, 1): features ``[B, d]`` -> logits ``[B]``."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("inv_scale", torch.ones(in_features))
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, 1)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Centre and scale inputs with the training features' statistics (scale floored for constant features)."""
        self.mean.copy_(features.mean(0))
        self.inv_scale.copy_(1.0 / features.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.hidden((x - self.mean) * self.inv_scale))
        return self.out(h).squeeze(1)


class ConvHead(nn.Module):
    """Small CNN on uint8 images ``[B, C, H, W]``: three stride-2 3x3 convs, global mean pool, 1 logit."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
                                    nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                    nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)])
        self.out = nn.Linear(2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = preprocess(x)
        for conv in self.convs:
            h = F.relu(conv(h))
        return self.out(h.mean(dim=(2, 3))).squeeze(1)  # [B, 2w] -> [B]


class LogitHead(nn.Module):
    """The ``gan-discriminator`` head: ``[B, 1]`` -> ``[B]``, the discriminator's logit unchanged (nothing to fit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def build_head(backbone_kind: str, feature_shape: tuple[int, ...], config: HeadConfig) -> nn.Module:
    """An untrained head for features of ``feature_shape`` (per example) from backbone ``backbone_kind``."""
    if backbone_kind == GAN_DISCRIMINATOR:
        if feature_shape != (1,):
            raise ValueError(f"the discriminator's head needs one logit per image, got feature shape {feature_shape}")
        return LogitHead()
    if backbone_kind == CNN:
        if len(feature_shape) != 3:
            raise ValueError(f"the cnn head needs images [C, H, W], got feature shape {feature_shape}")
        return ConvHead(feature_shape[0], config.conv_width)
    if len(feature_shape) != 1:
        raise ValueError(f"the MLP head needs flat features [d], got feature shape {feature_shape}")
    return MLPHead(feature_shape[0], config.hidden)


def init_head(head: nn.Module, generator: torch.Generator) -> None:
    """Uniform(±1/√fan_in) weights and biases, drawn from ``generator`` (PyTorch's default scale, made explicit)."""
    for module in head.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


@dataclass(frozen=True)
class HeadFit:
    best_epoch: int
    best_calibration_loss: float
    history: tuple[dict[str, float], ...]  # per epoch: train_loss, calibration_loss


def _bce(head: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str) -> float:
    logits = apply_in_chunks(head, x, device=device)
    return float(F.binary_cross_entropy_with_logits(logits, y))


def train_head(head: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
               calibration: tuple[torch.Tensor, torch.Tensor], config: HeadConfig, *, seed: int, fold: int,
               device: torch.device | str = "cpu", progress: Callable[..., Any] | None = None) -> HeadFit:
    """Fit ``head`` in place on ``train = (x, y)`` (y float 0/1); keep the epoch best on ``calibration``."""
    x, y = train
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"fold {fold}: {x.shape[0]} training inputs for {y.shape[0]} labels")
    init_head(head, torch_generator(seed, fold, _STREAM_INIT))
    if isinstance(head, MLPHead):
        head.set_standardisation(x.float())
    head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_loss, best_epoch, best_state = math.inf, -1, None
    history = []
    steps = math.ceil(x.shape[0] / config.batch_size)
    bar = progress(total=config.epochs * steps, desc=f"train fold {fold}", unit="step") if progress else None
    for epoch in range(config.epochs):
        order = torch.randperm(x.shape[0], generator=torch_generator(seed, fold, _STREAM_SHUFFLE, epoch))
        total = 0.0
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss = F.binary_cross_entropy_with_logits(head(x[idx].to(device)), y[idx].to(device))
            if not torch.isfinite(loss):
                raise ValueError(f"fold {fold}: classifier training diverged (loss {loss.item()}) at epoch {epoch}; "
                                 "lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
            if bar is not None:
                bar.update(1)
        calib_loss = _bce(head, *calibration, device)
        history.append({"train_loss": total / x.shape[0], "calibration_loss": calib_loss})
        if calib_loss < best_loss:
            best_loss, best_epoch, best_state = calib_loss, epoch, copy.deepcopy(head.state_dict())
    if bar is not None:
        bar.close()
    if best_state is None:
        raise ValueError(f"fold {fold}: the calibration loss was never finite; the classifier diverged")
    head.load_state_dict(best_state)
    head.eval()
    return HeadFit(best_epoch, best_loss, tuple(history))
