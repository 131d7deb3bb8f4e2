"""Maximum-likelihood training of either generator, resumable to the exact step.

Both models expose ``loss(x_uint8)`` (negative log-likelihood or negative ELBO in bits/dim), so
one loop trains both. Shuffling derives from (seed, epoch) and the torch RNG state is checkpointed,
so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rgm_ray.models.checkpoint import (WEIGHTS_FILE, load_trainer_state, load_weights,
                                       read_checkpoint_config, save_checkpoint)
from rgm_ray.models.registry import family_for_kind
from rgm_ray.seeding import numpy_rng
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.tracking import NullTracker, Tracker
from rgm_ray.configs import strict_from_dict

KEY_TRAIN_BPD = "train_bpd"
KEY_TEST_BPD = "test_bpd"
KEY_LR = "lr"  # metrics.json: the schedule's learning rate at the last step
KEY_SCHEDULED_LR = "scheduled_lr"  # its MLflow series, named apart from the configured ``train.lr`` param
KEY_IMAGES_PER_SEC = "train_images_per_sec"
KEY_TRAIN_SECONDS = "train_seconds"
CHECKPOINT_DIR = "checkpoint"
SAMPLES_PNG = "samples.png"
METRICS_JSON = "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; saved inside every checkpoint."""

    epochs: int = 1
    max_steps: int | None = None  # stop early after this many optimiser steps in total
    batch_size: int = 64
    lr: float = 1e-3
    lr_decay: float = 1.0  # multiplicative per step; PixelCNN++ used 0.999995
    grad_clip: float | None = None  # max gradient norm
    eval_every: int = 500  # steps between test evaluations
    eval_images: int = 2000  # test images per evaluation
    checkpoint_every: int = 500  # steps between checkpoints
    train_images: int | None = None  # use only the first N training images (quick runs)
    grid_images: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "eval_every", "eval_images", "checkpoint_every", "grid_images")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "train_images", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"train.{name} must be positive or null, got {value}")
        if not (self.lr > 0 and 0 < self.lr_decay <= 1):
            raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got lr={self.lr}, lr_decay={self.lr_decay}")
        if self.seed < 0:  # refused here, not at the first seeded draw after training has started
            raise ValueError(f"train.seed must be non-negative, got {self.seed}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return strict_from_dict(cls, d, "train")


@torch.no_grad()
def evaluate_bpd(model: nn.Module, images: np.ndarray, *, batch_size: int, device: torch.device) -> float:
    """Mean test bits/dim (negative log-likelihood, or negative ELBO for the VAE) over ``images``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device)
        total += float(model.loss(batch)) * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def step_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One step's numbers as MLflow logs them: the learning rate under its schedule is a measured
    series (``scheduled_lr``), not the configuration value ``lr`` a run's params hold."""
    return {KEY_SCHEDULED_LR if key == KEY_LR else key: value for key, value in metrics.items()}


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size  # drop the ragged last batch: every step sees a full batch


def train(model: nn.Module, train_images: np.ndarray, test_images: np.ndarray, config: TrainConfig,
          out: str | Path, *, meta: dict[str, Any], tracker: Tracker | None = None,
          device: torch.device | None = None,
          progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train ``model`` and write ``out/checkpoint``, ``out/samples.png`` and ``out/metrics.json``.

    If ``out/checkpoint`` holds a compatible unfinished run it is resumed from its last step.
    """
    from rgm_ray.viz import save_image_grid

    tracker = tracker or NullTracker()
    device = device or torch.device("cpu")
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    if config.train_images is not None:
        train_images = train_images[: config.train_images]
    steps_per_epoch = _steps_per_epoch(len(train_images), config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_images)} training images is fewer than one batch of {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    torch.manual_seed(config.seed)  # parameter init, dropout and VAE posterior noise
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    step, elapsed = 0, 0.0
    run_meta = {**meta, "train_config": asdict(config)}
    if (ckpt / WEIGHTS_FILE).is_file():
        step, elapsed = _resume(ckpt, model, optimizer, scheduler, run_meta, device)

    def checkpoint(metrics: dict[str, float]) -> None:
        trainer_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed}
        save_checkpoint(ckpt, model, meta={**run_meta, "step": step, "metrics": metrics},
                        trainer_state=trainer_state)

    metrics: dict[str, float] = {}
    bar = progress(total=total_steps, initial=step, desc=f"train {model.kind}", unit="step") if progress else None
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        order = numpy_rng(config.seed, epoch).permutation(len(train_images))
        for batch_index in range(offset, steps_per_epoch):
            if step >= total_steps:
                break
            started = time.perf_counter()
            idx = np.sort(order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size])
            batch = torch.from_numpy(train_images[idx]).to(device)
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {float(loss)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            elapsed += time.perf_counter() - started
            metrics = {KEY_TRAIN_BPD: loss.item(), KEY_LR: scheduler.get_last_lr()[0]}
            if step % config.eval_every == 0 or step == total_steps:
                metrics[KEY_TEST_BPD] = evaluate_bpd(model, test_images[: config.eval_images],
                                                     batch_size=config.batch_size, device=device)
            tracker.log_metrics(step_metrics(metrics), step=step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if k != KEY_LR})
            if step % config.checkpoint_every == 0 or step == total_steps:
                checkpoint(metrics)
    if bar is not None:
        bar.close()

    final = read_checkpoint_config(ckpt)["metrics"] if not metrics else metrics
    model.eval()
    grid = family_for_kind(model.kind).draw(model, config.grid_images, seed=config.seed)
    save_image_grid(grid, out / SAMPLES_PNG)
    summary = {"kind": model.kind, "steps": step, "epochs": step / steps_per_epoch,
               KEY_TRAIN_SECONDS: elapsed,
               KEY_IMAGES_PER_SEC: step * config.batch_size / elapsed if elapsed > 0 else math.nan,
               "parameters": sum(p.numel() for p in model.parameters()), **final}
    atomic_write_json(out / METRICS_JSON, summary)
    tracker.log_metrics({KEY_TRAIN_SECONDS: elapsed, KEY_IMAGES_PER_SEC: summary[KEY_IMAGES_PER_SEC]})
    tracker.log_artifact(out / SAMPLES_PNG)
    tracker.log_artifact(out / METRICS_JSON)
    return summary


def resume_identity(record: dict[str, Any]) -> str:
    """What must match to resume: everything but the training length, which may be extended."""
    train_config = {k: v for k, v in (record.get("train_config") or {}).items()
                    if k not in ("epochs", "max_steps")}
    return json.dumps({**record, "train_config": train_config}, sort_keys=True, default=str)


def _resume(ckpt: Path, model: nn.Module, optimizer, scheduler, run_meta: dict[str, Any],
            device: torch.device) -> tuple[int, float]:
    """Load weights + optimiser state from ``ckpt``; refuse a checkpoint of another configuration."""
    record = read_checkpoint_config(ckpt)
    mine = {"kind": model.kind, "model_config": model.config.to_dict(), **run_meta}
    if resume_identity(mine) != resume_identity({k: record.get(k) for k in mine}):
        raise ValueError(f"{ckpt} was written by a different configuration; use another --out or "
                         f"--overwrite to start afresh")
    model.load_state_dict(load_weights(ckpt))
    model.to(device)
    state = load_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["elapsed"])
