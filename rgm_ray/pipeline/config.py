"""Pipeline-level sections of a preset (kept apart from the orchestrator so presets can import them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgm_ray.weigh.classifier import HeadConfig
from rgm_ray.weigh.stage import WeighConfig
from rgm_ray.configs import strict_from_dict

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline-level switches of a preset (its ``pipeline`` section)."""

    pretrained: str | None = None  # name of committed checkpoints under rgm_ray/assets/ (demo)
    generators: tuple[str, ...] = ("vae", "pixelcnn")

    def __post_init__(self) -> None:
        object.__setattr__(self, "generators", tuple(self.generators))
        unknown = set(self.generators) - {"vae", "pixelcnn"}
        if unknown or not self.generators:
            raise ValueError(f"pipeline.generators must be a non-empty subset of vae, pixelcnn; got {self.generators}")
        if self.pretrained is not None and not (ASSETS / self.pretrained).is_dir():
            raise ValueError(f"pipeline.pretrained={self.pretrained!r}: no {ASSETS / self.pretrained}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        return strict_from_dict(cls, d, "pipeline")


@dataclass(frozen=True)
class WeighSettings:
    """The ``weigh`` section of a preset: the command-line settings the pipeline passes on."""

    backbone: str = "domain"
    folds: int = 2
    calibration: str = "temperature"
    epochs: int = 20
    lr: float = 1e-3
    max_per_class: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:  # validate through the stage's own config classes
        WeighConfig(backbone=self.backbone, folds=self.folds, calibration=self.calibration,
                    max_per_class=self.max_per_class, seed=self.seed, head=HeadConfig(epochs=self.epochs, lr=self.lr))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WeighSettings":
        return strict_from_dict(cls, d, "weigh")


TUNE_CONFIGS = Path(__file__).resolve().parent.parent.parent / "tune_configs"


@dataclass(frozen=True)
class SSLSettings:
    """The ``ssl`` section: which sweep in ``tune_configs/`` to run, with ``key=value`` overrides."""

    config: str = "ssl_demo.yaml"
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if not (TUNE_CONFIGS / self.config).is_file():
            raise ValueError(f"ssl.config: no {TUNE_CONFIGS / self.config}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSLSettings":
        return strict_from_dict(cls, d, "ssl")
