"""What every pipeline stage needs: the preset, the run directory, tracking and cluster settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rgm_ray.pipeline.presets import Preset, section
from rgm_ray.runtime import ClusterOptions


@dataclass
class Context:
    preset_name: str
    preset: Preset
    run_dir: Path
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    track: bool = True
    retrain: bool = False
    inception_weights: str | None = None  # local Inception-V3 weights file (paper preset)
    register_models: str | None = None  # MLflow registry prefix: each generator as <prefix>-<name>
    # the stages' progress output, as the single-stage commands have it (``rgm_ray.progress``): a bar
    # factory (``progress_bar``) and an iterable wrapper (``progress``); None: silent stages
    progress_bar: Callable[..., Any] | None = None
    progress: Callable[..., Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # stage name -> its result, as recorded

    def config(self, name: str) -> Any:
        return section(self.preset, name)

    @property
    def generators(self) -> tuple[str, ...]:
        return self.config("pipeline").generators

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)
