"""The train stage's entry point: fit one generator family on a dataset's train split.

``rgm train`` and the pipeline both call :func:`train_generator`; the family (from the registry)
says how to build the model and which resumable loop trains it (maximum likelihood, or adversarial).
A finished run is recorded in MLflow by :func:`log_training` (its summary numbers as metrics, its
checkpoint as a model, optionally registered), also for a committed checkpoint the pipeline copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rgm_ray.data import load_dataset
from rgm_ray.models.checkpoint import build_model, read_checkpoint_config
from rgm_ray.models.gan_training import KEY_FID
from rgm_ray.models.mlflow_model import log_generator
from rgm_ray.models.registry import get_family
from rgm_ray.models.training import CHECKPOINT_DIR, KEY_LR, KEY_TEST_BPD, METRICS_JSON, TrainConfig
from rgm_ray.results import StageResult
from rgm_ray.store.lock import output_lock
from rgm_ray.tracking import NullTracker, Tracker


@dataclass(frozen=True)
class TrainSpec:
    family: str  # a registry name ("vae", "pixelcnn", "gan")
    dataset: str
    out: str  # run directory: checkpoint/, samples.png, metrics.json
    model: Any  # the family's config dataclass
    train: TrainConfig  # or the subclass its training loop takes (GANTrainConfig)
    root: str | None = None
    preset: str | None = None  # recorded in the checkpoint's metadata


@dataclass(frozen=True)
class TrainResult(StageResult):
    family: str = ""
    run: str = ""
    checkpoint: str = ""
    origin: str = ""

    @property
    def message(self) -> str:
        m = self.metrics
        return (f"trained {self.family} for {m.get('steps')} steps ({m.get('train_seconds', 0):.0f} s): "
                f"{_quality(m)}; checkpoint {self.checkpoint}")


def _quality(metrics: dict[str, Any]) -> str:
    """Test bits/dim for a likelihood model; a GAN's domain FID, or that it was skipped."""
    if KEY_FID not in metrics:
        return f"test {metrics.get(KEY_TEST_BPD, float('nan')):.3f} bits/dim"
    fid = metrics[KEY_FID]
    return "no FID (no domain checkpoint given)" if fid is None else f"domain FID {fid:.2f}"


def summary_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A finished run's ``metrics.json`` numbers as MLflow metrics: ``epochs`` (epochs run, fractional) as
    ``epochs_run``, apart from the ``train.epochs`` param; the last scheduled ``lr`` is left to its series."""
    renamed = {"epochs": "epochs_run"}
    return {renamed.get(key, key): float(value) for key, value in metrics.items()
            if key != KEY_LR and isinstance(value, (int, float)) and not isinstance(value, bool)}


def log_training(tracker: Tracker, result: TrainResult, *, register_model: str | None = None,
                 with_config: bool = False) -> None:
    """Record the finished run ``result`` in ``tracker``'s run: summary metrics, the ``origin`` tag and the
    checkpoint as an MLflow model (registered as ``register_model`` if given); ``with_config`` also logs
    the checkpoint's model and training configs as params (a copied checkpoint: nothing else did)."""
    if with_config:
        record = read_checkpoint_config(result.checkpoint)
        tracker.log_params({"family": result.family, "dataset": record.get("dataset"), "model": record["model_config"],
                            "train": record.get("train_config") or {}})
    tracker.log_metrics(summary_metrics(result.metrics), step=int(result.metrics.get("steps") or 0))
    tracker.set_tags({"origin": result.origin})
    log_generator(tracker, result.checkpoint, registered_model_name=register_model)


def train_generator(spec: TrainSpec, *, tracker: Tracker | None = None, device: torch.device | None = None,
                    progress: Callable[..., Any] | None = None, origin: str = "trained",
                    register_model: str | None = None) -> TrainResult:
    """Train (or resume training) ``spec.family`` into ``spec.out``; the checkpoint is logged as an MLflow
    model, registered as ``register_model`` when given."""
    tracker = tracker or NullTracker()
    out = Path(spec.out)
    with output_lock(out):
        family = get_family(spec.family)
        train_split = load_dataset(spec.dataset, "train", spec.root)
        test_split = load_dataset(spec.dataset, "test", spec.root)
        torch.manual_seed(spec.train.seed)  # the initial weights are part of the run's seed
        model = build_model(family.kind, spec.model.to_dict())
        family.train(model, train_split.images, test_split.images, spec.train, out,
                     meta={"dataset": spec.dataset, "preset": spec.preset}, tracker=tracker, device=device,
                     progress=progress)
        metrics = json.loads((out / METRICS_JSON).read_text())
        result = TrainResult(out=str(out), metrics=metrics, family=family.name, run=str(out),
                             checkpoint=str(out / CHECKPOINT_DIR), origin=origin)
        log_training(tracker, result, register_model=register_model)
        return result
