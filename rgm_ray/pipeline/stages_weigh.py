"""Pipeline stage: importance weights for one generator's samples (``rgm weigh``)."""

from __future__ import annotations

from typing import Any

from rgm_ray.pipeline.config import WeighSettings
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.invoke import run_command
from rgm_ray.store import ManifestError, SampleSet
from rgm_ray.tracking import Tracker


def stage_weigh(ctx: Context, tracker: Tracker, name: str) -> dict[str, Any]:
    out = ctx.path("weights", name)
    weighted = out / "weighted"
    try:
        SampleSet(weighted)
        return {"out": str(out), "weighted": str(weighted)}  # finished earlier
    except (ManifestError, FileNotFoundError):
        pass
    s: WeighSettings = ctx.config("weigh")
    data = ctx.config("data")
    argv = ["weigh", "--real", data["dataset"], "--samples", ctx.outputs[f"generate_{name}"]["samples"],
            "--out", str(out), "--folds", str(s.folds), "--calibration", s.calibration,
            "--epochs", str(s.epochs), "--lr", str(s.lr), "--seed", str(s.seed), "--overwrite",
            "--cpus-per-worker", "0.5", "--gpus-per-worker", str(ctx.cluster.gpus_per_worker)]
    if data["root"]:
        argv += ["--root", str(data["root"])]
    if s.max_per_class is not None:
        argv += ["--max-per-class", str(s.max_per_class)]
    if ctx.cluster.address:
        argv += ["--address", ctx.cluster.address]
    if ctx.inception_weights:
        argv += ["--backbone", "inception", "--inception-weights", ctx.inception_weights]
    elif s.backbone == "domain":
        argv += ["--backbone", "domain", "--domain-checkpoint", ctx.outputs["domain"]["checkpoint"]]
    else:
        argv += ["--backbone", s.backbone]
    summary = run_command(ctx, argv)
    return {"out": str(out), **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}
