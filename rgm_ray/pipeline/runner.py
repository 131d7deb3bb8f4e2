"""Run the pipeline's stages in order, each as a nested MLflow run under one parent run."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.stages_eval import stage_evaluate, stage_report, stage_resample, stage_ssl
from rgm_ray.pipeline.stages_models import stage_data, stage_domain, stage_generate, stage_train
from rgm_ray.pipeline.stages_weigh import stage_weigh
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.tracking import Tracker, start_run

Stage = Callable[[Context, Tracker], dict[str, Any]]
STATE_FILE = "pipeline.json"


def stages_for(ctx: Context) -> list[tuple[str, Stage]]:
    """The ordered stage list for this preset (one train/generate pair per generator)."""
    generators = ctx.config("pipeline").generators
    stages: list[tuple[str, Stage]] = [("data", stage_data), ("domain", stage_domain)]
    stages += [(f"train_{g}", functools.partial(stage_train, name=g)) for g in generators]
    stages += [(f"generate_{g}", functools.partial(stage_generate, name=g)) for g in generators]
    stages += [(f"weigh_{g}", functools.partial(stage_weigh, name=g)) for g in generators]
    stages += [(f"resample_{g}", functools.partial(stage_resample, name=g)) for g in generators]
    stages.append(("evaluate", functools.partial(stage_evaluate, generators=generators)))
    stages.append(("ssl", functools.partial(stage_ssl, generators=generators)))
    stages.append(("report", stage_report))
    return stages


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_pipeline(ctx: Context, *, until: str | None = None) -> dict[str, Any]:
    """Run every stage (or those up to ``until``); returns per-stage outputs and timings."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    stages = stages_for(ctx)
    names = [name for name, _ in stages]
    if until is not None and until not in names:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(names)}")
    # A resumed run keeps what earlier runs recorded: a skipped stage reports only what it checked.
    previous = load_state(ctx.run_dir) if ctx.path(STATE_FILE).is_file() else {}
    if previous.get("preset") not in (None, ctx.preset_name):
        raise ValueError(f"{ctx.run_dir} holds a '{previous['preset']}' run; use another --out")
    timings: dict[str, float] = dict(previous.get("seconds", {}))
    started = time.perf_counter()
    with start_run(f"pipeline-{ctx.preset_name}", enabled=ctx.track,
                   params={"preset": ctx.preset_name, "run_dir": str(ctx.run_dir)}) as parent:
        for i, (name, stage) in enumerate(stages, 1):
            _say(f"[{i}/{len(stages)}] {name} ...")
            t0 = time.perf_counter()
            with start_run(name, enabled=ctx.track, nested=True) as tracker:
                ctx.outputs[name] = {**previous.get("outputs", {}).get(name, {}), **stage(ctx, tracker)}
            spent = time.perf_counter() - t0
            timings[name] = timings.get(name, 0.0) + spent  # compute spent on the stage over all runs
            _say(f"[{i}/{len(stages)}] {name} done in {spent:.0f} s")
            atomic_write_json(ctx.path(STATE_FILE), {"preset": ctx.preset_name, "stages": names,
                                                     "outputs": ctx.outputs, "seconds": timings})
            if name == until:
                break
        total = time.perf_counter() - started
        parent.log_metrics({f"seconds_{k}": v for k, v in timings.items()} | {"seconds_total": total})
    return {"run_dir": str(ctx.run_dir), "outputs": ctx.outputs, "seconds": timings, "seconds_total": total}


def load_state(run_dir: str | Path) -> dict[str, Any]:
    """The outputs and timings the last run recorded in ``run_dir``."""
    return json.loads((Path(run_dir) / STATE_FILE).read_text())
