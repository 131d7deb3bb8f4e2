"""Adversarial training of a :class:`~rgm_ray.models.gan.GAN`, resumable to the exact step.

The same contract as the maximum-likelihood loop (:func:`rgm_ray.models.training.train`): the same
arguments, ``out/checkpoint`` (weights loadable with ``weights_only=True`` and a trainer state with
both optimisers, both schedulers and the torch RNG), ``out/samples.png`` and ``out/metrics.json``
written last. Shuffling derives from (seed, epoch) and each step's latents from (seed, step), so a
resumed run continues exactly where the interrupted one stopped.

A GAN has no likelihood to evaluate, so its quality number is a FID in the domain ResNet's features
(:mod:`rgm_ray.models.domain`; not an Inception number) of ``eval_images`` samples against as many
test images, when the train config names a domain checkpoint; otherwise the FID is skipped and the
metrics say so. Each evaluation also writes a sample grid of fixed latents to ``out/grids/``, where
progress (or mode collapse) shows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from rgm_ray.models.checkpoint import (WEIGHTS_FILE, load_trainer_state, load_weights,
                                       read_checkpoint_config, save_checkpoint)
from rgm_ray.models.extractors import FeatureExtractorSpec, build_feature_extractor
from rgm_ray.models.gan import GAN, sample_gan, to_signed_unit
from rgm_ray.models.training import (CHECKPOINT_DIR, KEY_IMAGES_PER_SEC, KEY_LR, KEY_TRAIN_SECONDS, METRICS_JSON,
                                     SAMPLES_PNG, TrainConfig, resume_identity, step_metrics)
from rgm_ray.seeding import numpy_rng, torch_generator
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.tracking import NullTracker, Tracker

KEY_D_LOSS = "discriminator_loss"
KEY_G_LOSS = "generator_loss"
KEY_D_ACCURACY = "discriminator_accuracy"  # on the step's real and generated batch, before the update
KEY_FID = "fid"  # domain-feature FID against the test split; None when no domain checkpoint is given
KEY_FID_FEATURES = "fid_features"  # which features the FID used, or why it was skipped
GRIDS_DIR = "grids"
_TRAIN_NOISE_STREAM = 1  # step s draws its latents from (seed, 1, s): apart from the sampler's (seed, j)
_FEATURE_BATCH = 256


@dataclass(frozen=True)
class GANTrainConfig(TrainConfig):
    """:class:`TrainConfig` (same fields, same meaning; ``eval_images`` sizes the FID) plus the GAN's own."""

    lr: float = 2e-4  # both players (DCGAN, SNGAN)
    beta1: float = 0.5  # Adam's betas, both players
    beta2: float = 0.999
    discriminator_steps: int = 1  # discriminator updates (one real batch each) per generator update
    fid_domain_checkpoint: str | None = None  # a domain ResNet checkpoint directory; None: no FID

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"train.beta1 and train.beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.discriminator_steps <= 0:
            raise ValueError(f"train.discriminator_steps must be positive, got {self.discriminator_steps}")


class DomainFID:
    """FID in a domain ResNet's pooled features against fixed real images (their statistics computed once)."""

    def __init__(self, checkpoint: str, real_images: np.ndarray, *, device: torch.device) -> None:
        self.extractor = build_feature_extractor(FeatureExtractorSpec("domain", checkpoint), device)
        self.device = device
        self.real = fid_features_to_statistics(self._features(real_images))

    @torch.no_grad()
    def _features(self, images: np.ndarray) -> torch.Tensor:
        return torch.cat([self.extractor(torch.from_numpy(images[i:i + _FEATURE_BATCH]).to(self.device)).cpu()
                          for i in range(0, len(images), _FEATURE_BATCH)])

    def __call__(self, images: np.ndarray) -> float:
        generated = fid_features_to_statistics(self._features(images))
        return float(fid_statistics_to_metric(generated, self.real, False)[KEY_METRIC_FID])


def _step_budget(n_images: int, config: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps): every step sees a full batch, ``max_steps`` caps the epochs."""
    steps_per_epoch = n_images // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_images} training images is fewer than one batch of {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    return steps_per_epoch, total_steps if config.max_steps is None else min(total_steps, config.max_steps)


def _shuffled_batches(n_images: int, config: TrainConfig, steps_per_epoch: int, start: int,
                      stop: int) -> Iterator[tuple[int, np.ndarray]]:
    """(step, sorted image indices) for steps ``start..stop-1``; epoch e's order from (seed, e) alone,
    so a run resumed at ``start`` sees the batches the uninterrupted run saw."""
    step = start
    while step < stop:
        epoch, offset = divmod(step, steps_per_epoch)
        order = numpy_rng(config.seed, epoch).permutation(n_images)
        for batch_index in range(offset, min(steps_per_epoch, offset + stop - step)):
            yield step, np.sort(order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size])
            step += 1


def _accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """Fraction of the batch the discriminator classifies right (logit > 0: real)."""
    right = (real_logits > 0).sum() + (fake_logits < 0).sum()
    return float(right) / (len(real_logits) + len(fake_logits))


def _adversarial_step(model: GAN, real: torch.Tensor, z: torch.Tensor, update: Callable[[str, torch.Tensor], None],
                      *, update_generator: bool) -> dict[str, float]:
    """One discriminator update on ``real`` vs ``G(z)``, then, if due, one generator update; their metrics."""
    with torch.set_grad_enabled(update_generator):  # the generator's graph only when it learns
        fake = model.generator(z)
    logits = model.discriminator(torch.cat([real, fake.detach()]))  # [2B]: real first
    real_logits, fake_logits = logits[: len(real)], logits[len(real):]
    d_loss = model.discriminator_loss(real_logits, fake_logits)
    update("discriminator", d_loss)
    metrics = {KEY_D_LOSS: d_loss.item(), KEY_D_ACCURACY: _accuracy(real_logits, fake_logits)}
    if update_generator:
        model.discriminator.requires_grad_(False)  # its gradients are not needed for this update
        g_loss = model.generator_loss(model.discriminator(fake))
        update("generator", g_loss)
        model.discriminator.requires_grad_(True)
        metrics[KEY_G_LOSS] = g_loss.item()
    return metrics


def train_gan(model: GAN, train_images: np.ndarray, test_images: np.ndarray, config: GANTrainConfig,
              out: str | Path, *, meta: dict[str, Any], tracker: Tracker | None = None,
              device: torch.device | None = None, progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train ``model`` adversarially and write ``out/checkpoint``, ``out/samples.png`` and ``out/metrics.json``.

    If ``out/checkpoint`` holds a compatible unfinished run it is resumed from its last step.
    """
    from rgm_ray.viz import save_image_grid

    tracker = tracker or NullTracker()
    device = device or torch.device("cpu")
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    if config.train_images is not None:
        train_images = train_images[: config.train_images]
    steps_per_epoch, total_steps = _step_budget(len(train_images), config)
    eval_images = test_images[: config.eval_images]
    fid = (DomainFID(config.fid_domain_checkpoint, eval_images, device=device)  # a bad path fails before training
           if config.fid_domain_checkpoint is not None else None)

    torch.manual_seed(config.seed)
    model.to(device).train()
    players = {"generator": model.generator, "discriminator": model.discriminator}
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
                  for name, net in players.items()}
    schedulers = {name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
                  for name, opt in optimizers.items()}
    step, elapsed = 0, 0.0
    run_meta = {**meta, "train_config": asdict(config)}
    if (ckpt / WEIGHTS_FILE).is_file():
        step, elapsed = _resume(ckpt, model, optimizers, schedulers, run_meta, device)

    def update(name: str, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {name} loss {float(loss)} at step {step}")
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(players[name].parameters(), config.grad_clip)
        optimizers[name].step()
        schedulers[name].step()  # lr_decay applies per update of that player

    def evaluate() -> dict[str, float]:
        """FID (if configured) and a grid of the first ``grid_images`` samples, the same latents every time."""
        n = max(config.grid_images, len(eval_images) if fid is not None else 0)
        images = sample_gan(model, n, seed=config.seed, batch_size=config.batch_size).numpy()
        grid = save_image_grid(images[: config.grid_images], out / GRIDS_DIR / f"step_{step:07d}.png")
        tracker.log_artifact(grid, GRIDS_DIR)
        return {KEY_FID: fid(images)} if fid is not None else {}

    def checkpoint(metrics: dict[str, float]) -> None:
        trainer_state = {"optimizer": {name: opt.state_dict() for name, opt in optimizers.items()},
                         "scheduler": {name: s.state_dict() for name, s in schedulers.items()},
                         "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed}
        save_checkpoint(ckpt, model, meta={**run_meta, "step": step, "metrics": metrics},
                        trainer_state=trainer_state)

    metrics: dict[str, float] = {}
    bar = progress(total=total_steps, initial=step, desc=f"train {model.kind}", unit="step") if progress else None
    for index, idx in _shuffled_batches(len(train_images), config, steps_per_epoch, step, total_steps):
        started = time.perf_counter()
        real = to_signed_unit(torch.from_numpy(train_images[idx]).to(device))
        z = torch.randn(len(idx), model.config.latent_dim,
                        generator=torch_generator(config.seed, _TRAIN_NOISE_STREAM, index)).to(device)
        metrics = _adversarial_step(model, real, z, update,
                                    update_generator=(index + 1) % config.discriminator_steps == 0)
        step = index + 1  # steps done: what checkpoints, logs and the summary count
        elapsed += time.perf_counter() - started
        metrics[KEY_LR] = schedulers["discriminator"].get_last_lr()[0]
        if step % config.eval_every == 0 or step == total_steps:
            metrics.update(evaluate())
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
    save_image_grid(sample_gan(model, config.grid_images, seed=config.seed).numpy(), out / SAMPLES_PNG)
    summary = {"kind": model.kind, "steps": step, "epochs": step / steps_per_epoch,
               KEY_TRAIN_SECONDS: elapsed,
               KEY_IMAGES_PER_SEC: step * config.batch_size / elapsed if elapsed > 0 else math.nan,
               "parameters": sum(p.numel() for p in model.parameters()),
               **{f"{name}_parameters": sum(p.numel() for p in net.parameters()) for name, net in players.items()},
               **final, KEY_FID: final.get(KEY_FID),
               KEY_FID_FEATURES: (f"domain ResNet {config.fid_domain_checkpoint}, {len(eval_images)} test images"
                                  if fid is not None else "skipped: the train config names no fid_domain_checkpoint")}
    atomic_write_json(out / METRICS_JSON, summary)
    tracker.log_metrics({KEY_TRAIN_SECONDS: elapsed, KEY_IMAGES_PER_SEC: summary[KEY_IMAGES_PER_SEC]})
    tracker.log_artifact(out / SAMPLES_PNG)
    tracker.log_artifact(out / METRICS_JSON)
    return summary


def _resume(ckpt: Path, model: GAN, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
            run_meta: dict[str, Any], device: torch.device) -> tuple[int, float]:
    """Load weights and both players' optimiser state from ``ckpt``; refuse a checkpoint of another configuration."""
    record = read_checkpoint_config(ckpt)
    mine = {"kind": model.kind, "model_config": model.config.to_dict(), **run_meta}
    if resume_identity(mine) != resume_identity({k: record.get(k) for k in mine}):
        raise ValueError(f"{ckpt} was written by a different configuration; use another --out or "
                         f"--overwrite to start afresh")
    model.load_state_dict(load_weights(ckpt))
    model.to(device)
    state = load_trainer_state(ckpt)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizer"][name])
        schedulers[name].load_state_dict(state["scheduler"][name])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), float(state["elapsed"])
