"""The thesis's small CIFAR-style ResNet classifier, also used as a domain feature extractor.

Architecture (He et al. 2016, CIFAR variant): a 3x3 stem convolution, then one stage per entry of
``widths`` made of ``blocks[i]`` basic residual blocks (two 3x3 conv + batch-norm layers), every stage
after the first halving the resolution, then global average pooling and a linear head. The thesis
uses ``blocks=(2, 2, 2)`` and ``widths=(16, 32, 64)`` (a ResNet-14, ~0.18M parameters). Global
pooling makes it size-agnostic: 1x28x28 runs at 28->14->7 and 3x32x32 at 32->16->8.

Other stages (FID in a data domain, the importance-weight classifier) use :meth:`ResNet.features`,
so the pooled penultimate features are a first-class output, not a hook.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from rgm_ray.seeding import torch_generator


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a :class:`ResNet`; stored with checkpoints so a checkpoint rebuilds its own model."""

    in_channels: int = 3
    num_classes: int = 10
    blocks: tuple[int, ...] = (2, 2, 2)
    widths: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        # Lists (e.g. from JSON/YAML) are accepted and stored as tuples so the config stays hashable.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "widths", tuple(self.widths))
        if not _is_positive_int(self.in_channels):
            raise ValueError(f"in_channels must be a positive int, got {self.in_channels!r}")
        if not _is_positive_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        if not self.blocks or len(self.blocks) != len(self.widths):
            raise ValueError(
                f"blocks and widths must be non-empty and of equal length, got {self.blocks} and {self.widths}"
            )
        if not all(_is_positive_int(b) for b in self.blocks + self.widths):
            raise ValueError(f"blocks and widths must hold positive ints, got {self.blocks} and {self.widths}")

    @property
    def feature_dim(self) -> int:
        """Size of :meth:`ResNet.features` output."""
        return self.widths[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so typos do not pass silently."""
        unknown = set(d) - {"in_channels", "num_classes", "blocks", "widths"}
        if unknown:
            raise ValueError(f"unknown ResNetConfig keys: {sorted(unknown)}")
        return cls(**d)


def _is_positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: ``forward(x) -> logits [B, num_classes]``, ``features(x) -> [B, widths[-1]]``.

    ``x`` is a float tensor ``[B, in_channels, H, W]`` already normalised by the caller (see
    :func:`preprocess`). Weights are initialised from ``seed`` through an explicit generator, so the
    same ``(config, seed)`` always builds the same network.
    """

    kind: ClassVar[str] = "resnet"

    def __init__(self, config: ResNetConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        in_ch = config.widths[0]
        for stage, (n_blocks, width) in enumerate(zip(config.blocks, config.widths)):
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(_BasicBlock(in_ch, width, stride))
                in_ch = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        # He-normal (fan-out) convs and unit BN, as in He et al.; uniform(+-1/sqrt(fan_in)) head, zero bias.
        gen = torch_generator(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bound = 1.0 / math.sqrt(self.head.in_features)
        nn.init.uniform_(self.head.weight, -bound, bound, generator=gen)
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled penultimate features ``[B, widths[-1]]`` (after the last ReLU).

        Call under ``model.eval()`` when extracting features, so batch-norm uses its running
        statistics and an example's features do not depend on the rest of its batch.
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        h = self.stages(self.stem(x))  # [B, widths[-1], H', W']
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def preprocess(x_uint8: torch.Tensor) -> torch.Tensor:
    """Map uint8 images ``[B, C, H, W]`` in [0, 255] to float32 in [-1, 1] (``x / 127.5 - 1``).

    A fixed, data-independent map (rather than per-dataset mean/std) keeps real and generated images
    on exactly the same scale. Channel-last arrays must be permuted by the caller.
    """
    if x_uint8.dtype != torch.uint8:
        raise ValueError(f"preprocess expects a uint8 tensor, got {x_uint8.dtype}")
    if x_uint8.ndim != 4:
        raise ValueError(f"preprocess expects images [B, C, H, W], got shape {tuple(x_uint8.shape)}")
    return x_uint8.to(torch.float32) / 127.5 - 1.0
