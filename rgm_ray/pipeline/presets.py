"""Named configurations of the whole pipeline: ``tiny`` (tests), ``demo`` (the offline default on
2 CPU cores) and ``paper`` (CIFAR-10 at the thesis's scale).

A preset is a plain nested dict, one section per stage. Each section *is* its stage's config: the
dataclass that lives next to the stage's code builds it (``WeighConfig.from_dict``,
``ResampleConfig``, ...) and validates it, and the pipeline hands that object to the stage's entry
point unchanged. ``section.key=value`` overrides (values read as YAML; nested keys such as
``weigh.head.epochs=5`` too) adjust any field from the command line. The two sections that belong
to the pipeline itself, ``pipeline`` and ``ssl``, are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from rgm_ray.audit import AuditConfig
from rgm_ray.configs import apply_overrides, strict_from_dict
from rgm_ray.data import DATASET_NAMES, DATASET_SHAPES
from rgm_ray.evaluate.protocol import EvalConfig
from rgm_ray.generate import GenerateConfig
from rgm_ray.models.domain import DomainConfig
from rgm_ray.models.gan_training import GANTrainConfig
from rgm_ray.models.training import TrainConfig
from rgm_ray.weigh.stage import WeighConfig
from rgm_ray.models.registry import FAMILIES, GENERATOR_NAMES
from rgm_ray.resample import ResampleConfig
from rgm_ray.resample.config import METHODS
from rgm_ray.tune.config import sweep_config_path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline-level switches of a preset (its ``pipeline`` section)."""

    pretrained: str | None = None  # name of committed checkpoints under rgm_ray/assets/ (demo)
    generators: tuple[str, ...] = GENERATOR_NAMES  # every registered family, in registry order
    # Resamplers run beside the resample section's own method on every weighting, with its k, seed and
    # α choice, and evaluated side by side in ``evaluate_methods`` (the report's method comparison).
    compare_methods: tuple[str, ...] = ()
    # Resample fields for a compared method, e.g. {"rejection": {"rejection_quantile": 0.8}} (a DRS-style bound).
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "generators", tuple(self.generators))
        object.__setattr__(self, "compare_methods", tuple(self.compare_methods))
        if set(self.compare_methods) - set(METHODS) or len(set(self.compare_methods)) != len(self.compare_methods):
            raise ValueError(f"pipeline.compare_methods must be distinct names from {', '.join(METHODS)}; "
                             f"got {self.compare_methods}")
        known = {f.name for f in fields(ResampleConfig)} - {"method"}
        for method, options in self.method_options.items():
            if method not in self.compare_methods or not isinstance(options, dict) or set(options) - known:
                raise ValueError(f"pipeline.method_options.{method}: must name a compared method and map "
                                 f"resample fields ({', '.join(sorted(known))}) to values; got {options!r}")
        unknown = set(self.generators) - set(GENERATOR_NAMES)
        if unknown or not self.generators:
            raise ValueError(f"pipeline.generators must be a non-empty subset of {', '.join(GENERATOR_NAMES)}; "
                             f"got {self.generators}")
        if self.pretrained is not None and not (ASSETS / self.pretrained).is_dir():
            raise ValueError(f"pipeline.pretrained={self.pretrained!r}: no {ASSETS / self.pretrained}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        return strict_from_dict(cls, d, "pipeline")


@dataclass(frozen=True)
class SSLSettings:
    """The ``ssl`` section: which sweep to run (a shipped name or a YAML file), with ``key=value`` overrides."""

    config: str = "ssl_demo.yaml"
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        try:
            sweep_config_path(self.config)
        except FileNotFoundError as exc:
            raise ValueError(f"ssl.config: {exc}") from exc

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSLSettings":
        return strict_from_dict(cls, d, "ssl")


Preset = dict[str, Any]

PRESETS: dict[str, Preset] = {
    "tiny": {
        "data": {"dataset": "fashion-mnist", "root": None},
        "pixelcnn": {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0},
        "vae": {"latent_dim": 8, "base_channels": 8, "nr_mix": 1},
        "train_pixelcnn": {"epochs": 1, "max_steps": 12, "batch_size": 16, "lr": 2e-3, "eval_every": 6,
                           "eval_images": 64, "checkpoint_every": 6, "train_images": 512, "grid_images": 16},
        "train_vae": {"epochs": 1, "max_steps": 12, "batch_size": 16, "lr": 2e-3, "eval_every": 6,
                      "eval_images": 64, "checkpoint_every": 6, "train_images": 512, "grid_images": 16},
        "gan": {"latent_dim": 16, "base_channels": 8},
        "train_gan": {"epochs": 1, "max_steps": 12, "batch_size": 16, "lr": 2e-4, "eval_every": 6,
                      "eval_images": 64, "checkpoint_every": 6, "train_images": 512, "grid_images": 16},
        "domain": {"epochs": 1, "batch_size": 64, "train_images": 1024, "test_images": 500},
        "generate": {"num_samples": 256, "shard_size": 64, "batch_size": 64},
        "pipeline": {"pretrained": None, "compare_methods": ["rejection", "mh"]},
        "weigh": {"head": {"epochs": 3, "lr": 1e-2}},
        "resample": {"k": 64, "target_ess": 64},
        "evaluate": {"k": 64, "runs": 2, "uniform_k": True, "kid_subsets": 10},
        "audit": {"bootstrap": 50, "birthday_batch": 16, "birthday_batches": 10, "train_bank": 2000,
                  "max_images": 500},
        "ssl": {"config": "ssl_demo.yaml",
                "overrides": ["grid.seed=[0]", "train.epochs=1", "train.steps_per_epoch=5",
                              "train.val_size=100", "train.test_subset=200", "train.train_subset=2000"]},
    },
    "demo": {
        "data": {"dataset": "fashion-mnist", "root": None},
        "pixelcnn": {"nr_resnet": 1, "nr_filters": 32, "nr_logistic_mix": 5, "dropout": 0.0},
        "vae": {"latent_dim": 16, "base_channels": 16, "nr_mix": 1},
        "train_pixelcnn": {"epochs": 1, "batch_size": 32, "lr": 2e-3, "lr_decay": 0.9999,
                           "eval_every": 500, "eval_images": 1000, "checkpoint_every": 250},
        "train_vae": {"epochs": 5, "batch_size": 64, "lr": 2e-3, "eval_every": 500, "eval_images": 2000,
                      "checkpoint_every": 500},
        "gan": {"latent_dim": 64, "base_channels": 32},
        "train_gan": {"epochs": 5, "batch_size": 64, "lr": 2e-4, "eval_every": 500, "eval_images": 2000,
                      "checkpoint_every": 500},
        # the committed rgm_ray/assets/demo/domain network's recipe (copied unless --retrain; TRAINING.md): the
        # first 30000 train images only, so the weigh stage keeps the other 30000 as unseen real images
        "domain": {"epochs": 30, "batch_size": 128, "lr": 2e-3, "train_images": 30000, "schedule": "cosine",
                   "warmup_epochs": 1.0, "weight_decay": 0.05, "label_smoothing": 0.1, "crop_padding": 2,
                   "flip": True},
        "generate": {"num_samples": 6000, "shard_size": 500, "batch_size": 100},
        "pipeline": {"pretrained": "demo", "compare_methods": ["rejection", "mh"],
                     # exact rejection (M = max w) keeps ~1 % of 6000 samples: too few to compare at k = 1000
                     "method_options": {"rejection": {"rejection_quantile": 0.8}}},
        "weigh": {"head": {"epochs": 20, "lr": 1e-2}},
        "resample": {"k": 1000},  # α: the largest with ESS >= k (capped at N/2), recorded and reported
        "evaluate": {"k": 1000, "runs": 3, "uniform_k": True, "kid_subsets": 50},
        "audit": {"birthday_batch": 400},  # at s = 100 no 1000-image set showed a duplicate: only a lower bound
        "ssl": {"config": "ssl_demo.yaml"},
    },
    "paper": {
        "data": {"dataset": "cifar10", "root": None},
        "pixelcnn": {"nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout": 0.5},
        "vae": {"latent_dim": 180, "base_channels": 64, "nr_mix": 1},
        "train_pixelcnn": {"epochs": 889, "batch_size": 64, "lr": 1e-3, "lr_decay": 0.999995,
                           "eval_every": 5000, "eval_images": 10000, "checkpoint_every": 2000},
        "train_vae": {"epochs": 500, "batch_size": 128, "lr": 1e-3, "eval_every": 2000,
                      "eval_images": 10000, "checkpoint_every": 2000},
        # SNGAN-sized (Miyato et al. 2018: spectral norm + hinge, widths 128..512, latent 128) with DCGAN-style
        # optimisation (Adam 2e-4, betas 0.5/0.999, one discriminator step per generator step); ~100k steps
        "gan": {"latent_dim": 128, "base_channels": 128, "spectral_norm": True, "loss": "hinge"},
        "train_gan": {"epochs": 128, "batch_size": 64, "lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
                      "discriminator_steps": 1, "eval_every": 5000, "eval_images": 10000, "checkpoint_every": 2000},
        "domain": {"epochs": 30, "batch_size": 128},
        "generate": {"num_samples": 150_000, "shard_size": 1000, "batch_size": 256},
        "pipeline": {"pretrained": None, "compare_methods": ["rejection", "mh"]},
        "weigh": {"head": {"epochs": 20, "lr": 1e-3}},
        "resample": {"k": 10_000, "alpha": 1.0},
        "evaluate": {"k": 10_000, "runs": 3, "uniform_k": True},
        "audit": {},
        "ssl": {"config": "ssl_sweep.yaml"},
    },
}


def _model_section(cls: type) -> Callable[[Preset, dict[str, Any]], Any]:
    def build(preset: Preset, section: dict[str, Any]) -> Any:
        channels, size, _ = DATASET_SHAPES[preset["data"]["dataset"]]
        return cls.from_dict({"in_channels": channels, "image_size": size, **section})
    return build


def _data_section(preset: Preset, section: dict[str, Any]) -> dict[str, Any]:
    if set(section) != {"dataset", "root"}:
        raise ValueError(f"data section needs exactly 'dataset' and 'root', got {sorted(section)}")
    if section["dataset"] not in DATASET_NAMES:
        raise ValueError(f"data.dataset {section['dataset']!r} unknown; known: {DATASET_NAMES}")
    return section


# section name -> builder of its validated config object
SECTIONS: dict[str, Callable[[Preset, dict[str, Any]], Any]] = {
    "data": _data_section,
    **{family.preset_section: _model_section(family.config_class) for family in FAMILIES},
    "train_pixelcnn": lambda _, section: TrainConfig.from_dict(section),
    "train_vae": lambda _, section: TrainConfig.from_dict(section),
    "train_gan": lambda _, section: GANTrainConfig.from_dict(section),
    "domain": lambda _, section: DomainConfig.from_dict(section),
    "generate": lambda _, section: GenerateConfig.from_dict(section),
    "pipeline": lambda _, section: PipelineConfig.from_dict(section),
    "weigh": lambda _, section: WeighConfig.from_dict(section),
    "resample": lambda _, section: strict_from_dict(ResampleConfig, section, "resample"),
    "evaluate": lambda _, section: strict_from_dict(EvalConfig, section, "evaluate"),
    "audit": lambda _, section: strict_from_dict(AuditConfig, section, "audit"),
    "ssl": lambda _, section: SSLSettings.from_dict(section),
}


def load_preset(name: str, overrides: Iterable[str] = ()) -> Preset:
    """The named preset with ``section.key=value`` overrides applied, validated section by section."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    preset = apply_overrides(PRESETS[name], overrides, origin=f"preset {name!r}", known=PRESETS[name])
    validate(preset)
    return preset


def section(preset: Preset, name: str) -> Any:
    """The validated config object of one section."""
    if name not in preset:
        raise ValueError(f"preset has no section {name!r}")
    return SECTIONS[name](preset, preset[name])


def validate(preset: Preset) -> None:
    """Build every section's config (raises ValueError naming the section and the problem)."""
    unknown = sorted(set(preset) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown preset section(s) {unknown}; known: {sorted(SECTIONS)}")
    for name in preset:
        try:
            section(preset, name)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"preset section {name!r}: {exc}") from exc
