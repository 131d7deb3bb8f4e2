"""Pipeline stages after weighting: resample, evaluate, the SSL sweep, report."""

from __future__ import annotations

from typing import Any

from rgm_ray.pipeline.config import TUNE_CONFIGS, SSLSettings
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.invoke import run_command
from rgm_ray.report.build import build_report
from rgm_ray.resample import resample_sample_set
from rgm_ray.store import ManifestError, SampleSet
from rgm_ray.tracking import Tracker
from rgm_ray.tune.config import load_sweep_config
from rgm_ray.tune.results import SUMMARY_MD


def stage_resample(ctx: Context, tracker: Tracker, name: str) -> dict[str, Any]:
    out = ctx.path("resampled", name)
    try:
        info = SampleSet(out).manifest.info["resample"]  # finished earlier: keep it
    except (ManifestError, FileNotFoundError, KeyError):
        info = resample_sample_set(ctx.outputs[f"weigh_{name}"]["weighted"], out, ctx.config("resample"),
                                   address=ctx.cluster.address, overwrite=out.exists(), tracker=tracker)
    return {"resampled": str(out), **{k: v for k, v in info.items() if k != "message"}}


def stage_evaluate(ctx: Context, tracker: Tracker, generators: tuple[str, ...]) -> dict[str, Any]:
    out = ctx.path("evaluate")
    if (out / "metrics.json").is_file():
        return {"out": str(out)}
    config = ctx.config("evaluate")
    data = ctx.config("data")
    argv = ["evaluate", "--real", data["dataset"], "--k", str(config.k), "--runs", str(config.runs),
            "--seed", str(config.seed), "--kid-subsets", str(config.kid_subsets), "--out", str(out)]
    if data["root"]:
        argv += ["--root", str(data["root"])]
    if ctx.inception_weights:
        argv += ["--features", "inception", "--inception-weights", ctx.inception_weights]
    else:
        argv += ["--features", "domain", "--domain-checkpoint", ctx.outputs["domain"]["checkpoint"]]
    if config.uniform_k:
        argv.append("--uniform-k")
    for g in generators:
        argv += ["--set", f"{g}_plain={ctx.outputs[f'generate_{g}']['samples']}",
                 "--set", f"{g}_resampled={ctx.outputs[f'resample_{g}']['resampled']}"]
    summary = run_command(ctx, argv)
    return {"out": str(out), **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}


def stage_report(ctx: Context, tracker: Tracker) -> dict[str, Any]:
    md, page = build_report(ctx.run_dir, outputs=ctx.outputs)
    tracker.log_artifact(md)
    tracker.log_artifact(page)
    return {"markdown": str(md), "html": str(page)}


def _source_paths(ctx: Context, generators: tuple[str, ...]) -> dict[str, str]:
    """Sweep source names -> this run's sets: ``<g>_plain``/``_resampled``/``_weighted``, and the
    bare ``plain``/``resampled``/``weighted`` of the thesis's sweep for the last generator (PixelCNN++)."""
    paths: dict[str, str] = {}
    for g in generators:
        paths[f"{g}_plain"] = ctx.outputs[f"generate_{g}"]["samples"]
        paths[f"{g}_resampled"] = ctx.outputs[f"resample_{g}"]["resampled"]
        paths[f"{g}_weighted"] = "weighted:" + ctx.outputs[f"weigh_{g}"]["weighted"]
    last = generators[-1]
    for kind in ("plain", "resampled", "weighted"):
        paths[kind] = paths[f"{last}_{kind}"]
    return paths


def stage_ssl(ctx: Context, tracker: Tracker, generators: tuple[str, ...]) -> dict[str, Any]:
    out = ctx.path("ssl")
    summary_md = out / SUMMARY_MD
    if summary_md.is_file():
        return {"out": str(out), "summary_md": str(summary_md)}
    settings: SSLSettings = ctx.config("ssl")
    config_path = TUNE_CONFIGS / settings.config
    sweep = load_sweep_config(config_path, settings.overrides)
    data = ctx.config("data")
    paths = _source_paths(ctx, generators)
    overrides = [f"dataset={data['dataset']}", *settings.overrides]
    if data["root"]:
        overrides.append(f"root={data['root']}")
    overrides += [f"sources.{name}={path}" for name, path in paths.items() if name in sweep.sources]
    # generated sources of generators this run did not train are dropped from the grid
    available = [name for name in sweep.grid["source"] if name in paths or name in ("real", "none")]
    if not available:
        raise ValueError(f"{config_path}: none of the grid's sources {list(sweep.grid['source'])} exist in this run")
    overrides.append(f"grid.source=[{', '.join(available)}]")
    if sweep.compare_to is not None and sweep.compare_to not in available + [b["source"] for b in sweep.baselines]:
        overrides.append("compare_to=null")
    argv = ["tune", "--config", str(config_path), "--out", str(out), "--overwrite"]
    for item in overrides:
        argv += ["--set", item]
    if ctx.cluster.address:
        argv += ["--address", ctx.cluster.address]
    summary = run_command(ctx, argv)
    return {"out": str(out), "summary_md": str(summary_md),
            **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))}}
