"""Pipeline stages up to generation: real data, domain network, generators, samples.

Every stage checks whether its artefact is already complete and valid and, if so, skips its work,
so re-running a crashed pipeline continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rgm_ray.data import load_dataset
from rgm_ray.generate import generate_sample_set, make_plan
from rgm_ray.models.checkpoint import CONFIG_FILE, build_model, read_checkpoint_config
from rgm_ray.models.domain import train_domain_classifier
from rgm_ray.models.training import CHECKPOINT_DIR, METRICS_JSON, train
from rgm_ray.pipeline.config import ASSETS
from rgm_ray.pipeline.context import Context
from rgm_ray.store import ManifestError, SampleSet, export_dataset
from rgm_ray.tracking import Tracker

GENERATOR_KINDS = {"vae": "vae", "pixelcnn": "pixelcnnpp"}


def _is_set(path: Path) -> bool:
    try:
        SampleSet(path)
    except (ManifestError, FileNotFoundError):
        return False
    return True


def stage_data(ctx: Context, tracker: Tracker) -> dict[str, Any]:
    data = ctx.config("data")
    out = {}
    for split in ("train", "test"):
        path = ctx.path("data", f"real_{split}")
        if not _is_set(path):
            export_dataset(load_dataset(data["dataset"], split, data["root"]), path, overwrite=path.exists())
        out[split] = str(path)
    tracker.log_params({"dataset": data["dataset"]})
    return out


def stage_domain(ctx: Context, tracker: Tracker) -> dict[str, Any]:
    path = ctx.path("domain")
    if not (path / CONFIG_FILE).is_file():
        data = ctx.config("data")
        train_domain_classifier(load_dataset(data["dataset"], "train", data["root"]),
                                load_dataset(data["dataset"], "test", data["root"]),
                                ctx.config("domain"), path, tracker=tracker)
    metrics = read_checkpoint_config(path)["metrics"]
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
    return {"checkpoint": str(path), **metrics}


def stage_train(ctx: Context, tracker: Tracker, name: str) -> dict[str, Any]:
    """Train generator ``name`` (vae|pixelcnn), or copy the preset's committed checkpoint."""
    run = ctx.path("models", name)
    pretrained = ctx.config("pipeline").pretrained
    if pretrained and not ctx.retrain:
        source = ASSETS / pretrained / name
        if not (run / CHECKPOINT_DIR / CONFIG_FILE).is_file():
            if run.exists():
                shutil.rmtree(run)
            shutil.copytree(source, run)
        origin = f"committed checkpoint rgm_ray/assets/{pretrained}/{name} (see its TRAINING.md)"
    else:
        if not (run / METRICS_JSON).is_file():  # absent until training finished; train() resumes
            data = ctx.config("data")
            train_config = ctx.config(f"train_{name}")
            torch.manual_seed(train_config.seed)  # the initial weights are part of the run's seed
            model = build_model(GENERATOR_KINDS[name], ctx.config(name).to_dict())
            train(model, load_dataset(data["dataset"], "train", data["root"]).images,
                  load_dataset(data["dataset"], "test", data["root"]).images, train_config, run,
                  meta={"dataset": data["dataset"], "preset": ctx.preset_name}, tracker=tracker)
        origin = "trained in this run"
    metrics = json.loads((run / METRICS_JSON).read_text())
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracker.set_tags({"origin": origin})
    return {"run": str(run), "checkpoint": str(run / CHECKPOINT_DIR), "origin": origin, **metrics}


def stage_generate(ctx: Context, tracker: Tracker, name: str) -> dict[str, Any]:
    config = ctx.config("generate")
    checkpoint = ctx.outputs[f"train_{name}"]["checkpoint"]
    kind = GENERATOR_KINDS[name]
    plan = make_plan(checkpoint, num_samples=config.num_samples, shard_size=config.shard_size,
                     seed=config.seed, sampler=config.sampler_for(kind))
    options = dataclasses.replace(ctx.cluster, batch_size=config.batch_size)
    summary = generate_sample_set(checkpoint, ctx.path("samples", name), plan, options, tracker=tracker)
    return {"samples": str(ctx.path("samples", name)), **{k: v for k, v in summary.items() if k != "message"}}
