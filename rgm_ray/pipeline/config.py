"""The ``pipeline`` section of a preset (kept apart from the orchestrator so presets can import it)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

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
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown pipeline key(s) {unknown}")
        return cls(**d)
