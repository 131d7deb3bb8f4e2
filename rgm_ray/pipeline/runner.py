"""Run the pipeline's stages in order: skip the complete ones, time and track the rest.

The runner alone decides what runs: a stage whose output is complete (its own ``is_complete``) is
skipped, keeping what ``pipeline.json`` recorded of it (or facts read back from the output), so
re-running a crashed pipeline continues where it stopped and never redoes finished work. Each stage that runs gets one MLflow run nested under the pipeline's parent run, holding
that stage's params, metrics and artefacts (the stage entry points log into the tracker they are
given and open no runs of their own). On a re-run, runs a killed attempt left RUNNING are closed,
and each skipped stage is linked to the earlier run that holds its numbers
(:mod:`rgm_ray.pipeline.history`). An exception or Ctrl-C ends the open runs FAILED or KILLED.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.history import TAG_STAGE, close_stale_runs, link_reused_stage
from rgm_ray.pipeline.stages import stages_for
from rgm_ray.report.build import STATE_FILE, load_state
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.store.lock import output_lock
from rgm_ray.tracking import TAG_PRESET, start_run


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_pipeline(ctx: Context, *, until: str | None = None) -> dict[str, Any]:
    """Run every stage (or those up to ``until``); returns per-stage outputs and timings.

    The run directory is locked for the whole run (a second pipeline into it is refused at once);
    each stage also locks its own output inside it.
    """
    with output_lock(ctx.run_dir):
        return _run_stages(ctx, until)


def _bookkeeping(step: Callable[..., Any], *args: Any) -> Any:
    """Run an MLflow bookkeeping ``step`` (closing or linking earlier attempts' runs); a tracking store
    that fails it costs a warning, not the pipeline. Returns its result, None when it failed."""
    try:
        return step(*args)
    except Exception as exc:  # noqa: BLE001 - any store error; the stages' own runs are unaffected
        _say(f"WARNING: MLflow bookkeeping ({step.__name__}) failed: {' '.join(str(exc).split())}")
        return None


def _run_stages(ctx: Context, until: str | None) -> dict[str, Any]:
    stages = stages_for(ctx)
    names = [stage.name for stage in stages]
    if until is not None and until not in names:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(names)}")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    previous = load_state(ctx.run_dir)
    if previous.get("preset") not in (None, ctx.preset_name):
        raise ValueError(f"{ctx.run_dir} holds a '{previous['preset']}' run; use another --out")
    recorded: dict[str, Any] = previous.get("outputs", {})
    timings: dict[str, float] = dict(previous.get("seconds", {}))
    started = time.perf_counter()
    with start_run(f"pipeline-{ctx.preset_name}", enabled=ctx.track, out=ctx.run_dir,
                   tags={TAG_PRESET: ctx.preset_name},
                   params={"preset": ctx.preset_name, "run_dir": str(ctx.run_dir)}) as parent:
        link = parent.link()
        if link is not None and (closed := _bookkeeping(close_stale_runs, link) or 0):
            _say(f"MLflow: closed {closed} run(s) an earlier attempt left RUNNING (now KILLED)")
        for i, stage in enumerate(stages, 1):
            if stage.is_complete(ctx):
                ctx.outputs[stage.name] = recorded.get(stage.name) or stage.recorded_facts(ctx)
                _say(f"[{i}/{len(stages)}] {stage.name}: complete in {stage.out(ctx)}, skipped")
                if link is not None:
                    _bookkeeping(link_reused_stage, link, stage.name)
            else:
                _say(f"[{i}/{len(stages)}] {stage.name} ...")
                t0 = time.perf_counter()
                with start_run(stage.name, enabled=ctx.track, nested=True, tags={TAG_STAGE: stage.name}) as tracker:
                    result = stage.run(ctx, tracker)
                ctx.outputs[stage.name] = result.to_dict()
                spent = time.perf_counter() - t0
                timings[stage.name] = timings.get(stage.name, 0.0) + spent  # compute over all runs
                _say(f"[{i}/{len(stages)}] {stage.name} done in {spent:.0f} s: {result.message}")
            atomic_write_json(ctx.path(STATE_FILE), {"preset": ctx.preset_name, "stages": names,
                                                     "outputs": ctx.outputs, "seconds": timings})
            if stage.name == until:
                break
        total = time.perf_counter() - started
        parent.log_metrics({f"seconds_{k}": v for k, v in timings.items()} | {"seconds_total": total})
    return {"run_dir": str(ctx.run_dir), "outputs": ctx.outputs, "seconds": timings, "seconds_total": total}
