"""Checkpoints that rebuild their own model: ``config.json`` (kind + model config) + ``model.pt``.

A checkpoint is a directory written atomically as a whole, so ``model.pt`` and ``config.json``
always belong together. Weights load with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgm_ray.models.registry import FAMILIES
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.store.atomic import atomic_directory

FORMAT = "rgm_ray.checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"  # optimizer/scheduler/RNG state, only needed to resume training

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    **{family.kind: (family.config_class, family.model_class) for family in FAMILIES},
    ResNet.kind: (ResNetConfig, ResNet),  # the domain network: checkpointed, but not a generator
}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupted or of an unknown kind."""


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}")
    config_cls, model_cls = MODEL_KINDS[kind]
    return model_cls(config_cls.from_dict(config))


def save_checkpoint(path: str | Path, model: nn.Module, *, meta: dict[str, Any] | None = None,
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write (or atomically replace) checkpoint directory ``path``."""
    path = Path(path)
    record = {"format": FORMAT, "kind": model.kind, "model_config": model.config.to_dict(), **(meta or {})}
    with atomic_directory(path, overwrite=True) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (kind, model config, training metadata)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; {path} is not an rgm_ray checkpoint directory "
                              "(written by 'rgm train')")
    try:
        record = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    if record.get("format") != FORMAT or "kind" not in record or "model_config" not in record:
        raise CheckpointError(f"{config_path}: not an {FORMAT} checkpoint config")
    return record


def _load_tensors(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted errors for truncated or foreign files
        raise CheckpointError(f"{file}: cannot be loaded as weights ({exc.__class__.__name__}: {exc})") from exc


def load_weights(path: str | Path) -> dict[str, Any]:
    """The state dict in checkpoint directory ``path`` (CPU tensors)."""
    return _load_tensors(Path(path) / WEIGHTS_FILE)


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in checkpoint directory ``path`` (eval mode, on ``device``)."""
    path = Path(path)
    record = read_checkpoint_config(path)
    model = build_model(record["kind"], record["model_config"])
    state = load_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: weights do not fit the {record['kind']} config in "
                              f"{CONFIG_FILE} ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval()


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return _load_tensors(Path(path) / TRAINER_FILE)


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over the weights and model config: the provenance of every sample drawn from it."""
    path = Path(path)
    record = read_checkpoint_config(path)
    digest = hashlib.sha256(json.dumps({"kind": record["kind"], "config": record["model_config"]},
                                       sort_keys=True).encode())
    with open(path / WEIGHTS_FILE, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
