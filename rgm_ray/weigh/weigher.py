"""The fitted weigher: backbone + one head and temperature per fold + the fold rule, saved as a directory.

``OUT/classifier/`` holds ``weigher.json`` (everything that rebuilds it), ``heads.pt`` (the fold
heads' state dicts, loaded with ``weights_only=True``) and ``crossfit.npz`` (which ids each fold
trained, calibrated and was tested on, for audits). Scorers on any worker load it from there and
map (sample_id, uint8 image) to a float32 log-weight.

Log-weight of a generated sample ``x`` with fold ``k = fold(seed, id)``: ``z_k(x) / T_k``, the
calibrated logit of the model that never saw ``x`` (classes are balanced, so no prior term).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rgm_ray.store.atomic import atomic_directory
from rgm_ray.models.extractors import FeatureExtractor
from rgm_ray.weigh.backbones import BackboneSpec, build_backbone
from rgm_ray.weigh.classifier import HeadConfig, build_head
from rgm_ray.weigh.crossfit import GENERATED, CrossFitPlan, assign_folds
from rgm_ray.weigh.features import DEFAULT_CHUNK, apply_in_chunks

FORMAT = "rgm_ray.weigher/1"
CONFIG_FILE = "weigher.json"
HEADS_FILE = "heads.pt"
CROSSFIT_FILE = "crossfit.npz"


@dataclass(frozen=True)
class WeigherConfig:
    backbone: BackboneSpec
    head: HeadConfig
    image_shape: tuple[int, int, int]
    feature_shape: tuple[int, ...]  # per example, as the backbone outputs it
    seed: int
    temperatures: tuple[float, ...]  # one per fold; 1.0 everywhere with --calibration none
    chunk: int = DEFAULT_CHUNK

    @property
    def folds(self) -> int:
        return len(self.temperatures)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "backbone": self.backbone.to_dict(), "head": self.head.to_dict(),
                "image_shape": list(self.image_shape), "feature_shape": list(self.feature_shape),
                "seed": self.seed, "temperatures": list(self.temperatures), "chunk": self.chunk}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WeigherConfig":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} weigher config (format {d.get('format')!r})")
        return cls(BackboneSpec.from_dict(d["backbone"]), HeadConfig.from_dict(d["head"]),
                   tuple(d["image_shape"]), tuple(d["feature_shape"]), int(d["seed"]),
                   tuple(float(t) for t in d["temperatures"]), int(d["chunk"]))


def head_logits(head: nn.Module, features: torch.Tensor, *, chunk: int = DEFAULT_CHUNK,
                device: torch.device | str = "cpu") -> np.ndarray:
    """A head's float32 logits ``[n]``, batch-invariant (fixed chunks); the driver and the scorers both use it."""
    return apply_in_chunks(head, features, chunk=chunk, device=device).numpy()


def apply_temperature(raw: np.ndarray, temperature: float) -> np.ndarray:
    """float32 ``raw / T`` (divided in float64): the calibrated logit, i.e. the log-weight."""
    return (raw.astype(np.float64) / temperature).astype(np.float32)


class LogWeightModel:
    """Callable pieces of the weigher; the driver (held-out metrics) and the scorers share them."""

    def __init__(self, config: WeigherConfig, heads: list[nn.Module], *, device: torch.device | str = "cpu",
                 backbone: FeatureExtractor | None = None) -> None:
        if len(heads) != config.folds:
            raise ValueError(f"{len(heads)} heads for {config.folds} folds")
        self.config = config
        self.device = device
        self.backbone = backbone if backbone is not None else build_backbone(config.backbone, device)
        self.heads = [head.to(device).eval() for head in heads]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[n, C, H, W]`` -> backbone features ``[n, *feature_shape]`` on the CPU."""
        if tuple(images.shape[1:]) != self.config.image_shape:
            raise ValueError(f"images of shape {tuple(images.shape[1:])}, but the weigher was fitted on "
                             f"{self.config.image_shape}")
        return apply_in_chunks(self.backbone, images, chunk=self.config.chunk, device=self.device)

    def raw_logits(self, fold: int, features: torch.Tensor) -> np.ndarray:
        """Uncalibrated float32 logits of fold ``fold``'s head."""
        return head_logits(self.heads[fold], features, chunk=self.config.chunk, device=self.device)

    def calibrate(self, fold: int, raw: np.ndarray) -> np.ndarray:
        """float32 ``raw / T_fold``: the log-weight."""
        return apply_temperature(raw, self.config.temperatures[fold])

    def log_weights(self, sample_ids: np.ndarray, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(float32 log-weights, int64 fold of the model that produced each) for generated samples."""
        folds = assign_folds(sample_ids, seed=self.config.seed, folds=self.config.folds, role=GENERATED)
        features = self.features(images)
        out = np.empty(len(sample_ids), np.float32)
        for k in np.unique(folds):
            rows = np.flatnonzero(folds == k)
            out[rows] = self.calibrate(int(k), self.raw_logits(int(k), features[torch.from_numpy(rows)]))
        return out, folds


def save_weigher(path: str | Path, config: WeigherConfig, heads: list[nn.Module], plan: CrossFitPlan) -> Path:
    """Write the weigher directory atomically (replacing an older one)."""
    path = Path(path)
    with atomic_directory(path, overwrite=True) as tmp:
        torch.save({f"fold{k}": head.state_dict() for k, head in enumerate(heads)}, tmp / HEADS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        arrays = {f"{part}_{k}": getattr(split, part) for k, split in enumerate(plan.folds)
                  for part in ("train_real", "train_gen", "calib_real", "calib_gen", "test_real", "test_gen")}
        np.savez(tmp / CROSSFIT_FILE, **arrays)
    return path


def read_crossfit(path: str | Path) -> dict[str, np.ndarray]:
    """The saved fold membership: ``{"train_gen_0": ids, ...}``."""
    with np.load(Path(path) / CROSSFIT_FILE) as data:
        return {name: data[name] for name in data.files}


def load_weigher(path: str | Path, *, device: torch.device | str = "cpu") -> LogWeightModel:
    """Rebuild the fitted weigher in ``path`` on ``device``."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; {path} is not a fitted weigher directory")
    config = WeigherConfig.from_dict(json.loads(config_path.read_text()))
    states = torch.load(path / HEADS_FILE, map_location="cpu", weights_only=True)
    heads = []
    for k in range(config.folds):
        head = build_head(config.backbone.kind, config.feature_shape, config.head)
        head.load_state_dict(states[f"fold{k}"])
        heads.append(head)
    return LogWeightModel(config, heads, device=device)
