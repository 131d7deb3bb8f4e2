"""Run a sweep with Ray Tune: one trial per cell, each its own MLflow run, then the results tables.

Tune runs the grid (``tune.grid_search`` over the cell list), reserving ``resources_per_trial``
for every trial and, with a scheduler, stopping trials early on per-epoch validation accuracy
(ASHA). The sweep's own MLflow run is the caller's (``rgm tune``'s, or the pipeline's ``ssl`` stage
run): it gets the sweep's configuration as params, the trial counts and the best cell as metrics and
the tables as artefacts. Each trial opens its run *inside* the trainable, as a child of that run in
its experiment (so figures and ``metrics.json`` are logged as artefacts from the worker): the store,
experiment and parent run travel to the Ray actors as a :class:`~rgm_ray.tracking.RunLink`, and the
parent exists before any trial starts, so an SQLite store's schema is set up once, before trials
write to it concurrently. On a multi-node cluster both ``out`` (trials write their ``metrics.json``
into it) and the tracking URI must be reachable from every node.

Trials are cheap to start, because their fixed costs are paid once per sweep, not per trial: the
driver reads the real splits and every used sample set once (:class:`SweepData`, shared through
Ray's object store), and Tune reuses each trial's actor for the next trial, so a worker starts,
imports torch and MLflow and warms up the optimiser once. Neither changes a result: a trial builds
the same arrays from the shared data, and its RNGs are all seeded per trial (see ``ssl.trainer``).

Ray is imported lazily so ``rgm --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rgm_ray.data import ImageDataset, load_dataset
from rgm_ray.results import StageResult
from rgm_ray.runtime import init_ray, ray_verbose
from rgm_ray.ssl.sources import NONE, REAL, UnlabeledPool, load_sample_set_pool
from rgm_ray.ssl.stage import select_indices
from rgm_ray.ssl.trainer import KEY_BEST_EPOCH, KEY_BEST_VAL_ACC, KEY_EPOCH, KEY_TEST_ACC, KEY_TEST_ACC_LAST, KEY_VAL_ACC
from rgm_ray.store.atomic import ArtefactExistsError
from rgm_ray.store.lock import output_lock
from rgm_ray.tracking import NullTracker, RunLink, Tracker, end_open_children
from rgm_ray.tune.config import SweepConfig
from rgm_ray.tune.results import COMPLETED, ERROR, STOPPED, SUMMARY_MD, write_results

RAY_RESULTS = "ray_results"
TAG_SWEEP = "rgm.sweep"
TAG_TRIAL = "rgm.trial"


class SweepFailedError(RuntimeError):
    """No trial of the sweep completed."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs besides its cell; shipped to the workers once via ``tune.with_parameters``."""

    sweep: str
    dataset: str
    train: dict[str, Any]
    sources: dict[str, str]  # name -> source string with absolute paths
    trials_dir: str  # Tune's experiment directory under ``out``; <trials_dir>/<trial name>/metrics.json
    link: RunLink | None  # the sweep's run, each trial's parent; None: no MLflow
    threads: int
    use_gpu: bool


@dataclass(frozen=True)
class SweepData:
    """The data trials train on, read once on the driver. ``tune.with_parameters`` puts it in Ray's
    object store once per sweep, and every trial maps it from there (zero-copy, read-only) instead of
    reading and decoding the files again."""

    train: ImageDataset
    test: ImageDataset
    pools: dict[str, UnlabeledPool]  # used sample-set sources, by name

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (so the object store) gives arrays canonical strides, but the stride of a size-1
        # axis decides whether torch takes a batch for channels-last, which changes how convolutions
        # round: load_dataset's Fashion-MNIST images [N, 1, 28, 28] have stride 0 on the channel axis.
        # So each image array travels with its strides, restored on arrival.
        strides = [holder.images.strides for holder in (self.train, self.test, *self.pools.values())]
        return _unpickle_sweep_data, (self.train, self.test, self.pools, strides)


def _unpickle_sweep_data(train: ImageDataset, test: ImageDataset, pools: dict[str, UnlabeledPool],
                         strides: list[tuple[int, ...]]) -> SweepData:
    """:class:`SweepData` with its image arrays' original strides (only size-1 axes' can differ)."""
    train, test, *rest = (replace(holder, images=np.lib.stride_tricks.as_strided(holder.images, strides=s))
                          for holder, s in zip((train, test, *pools.values()), strides))
    return SweepData(train, test, dict(zip(pools, rest)))


def trial_name(cell: dict[str, Any]) -> str:
    """A short, unique, filesystem-safe name for a cell, e.g. ``l1000_plain_w0.0005_s3``."""
    return f"l{cell['labels']}_{cell['source']}_w{cell['sl_weight']:g}_s{cell['seed']}"


def _tune_trial_name(trial: Any) -> str:
    return trial_name(trial.config["cell"])


def _run_trial(config: dict[str, Any], setup: TrialSetup, data: SweepData) -> None:
    """The Tune trainable: train one cell, reporting every epoch to Tune and MLflow."""
    import torch
    from ray import tune

    from rgm_ray.runtime import set_torch_threads
    from rgm_ray.ssl.sources import parse_source
    from rgm_ray.ssl.stage import run_ssl, ssl_data
    from rgm_ray.ssl.trainer import SSLConfig
    from rgm_ray.tracking import start_run

    cell = config["cell"]
    ssl_config = SSLConfig.from_dict({**setup.train, "labels": cell["labels"], "sl_weight": cell["sl_weight"],
                                      "seed": cell["seed"]})
    source = parse_source(setup.sources[cell["source"]])
    set_torch_threads(setup.threads)
    device = torch.device("cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu")
    name = trial_name(cell)
    # Not tune.get_context().get_trial_dir(): in a reused actor that is a local directory Tune never syncs.
    trial_dir = Path(setup.trials_dir) / name
    params = {**cell, "dataset": setup.dataset, "unlabeled": str(source), "train": setup.train}
    final: dict[str, float] = {}

    def report(record: dict[str, float]) -> None:
        # The last record (with the test accuracy) is reported only after metrics.json is written and
        # the MLflow run is closed: a scheduler may stop the trial at that report (ASHA at max_t).
        if KEY_TEST_ACC in record:
            final.update(record)
        else:
            tune.report(record)

    # Tune stops a trial by raising SystemExit inside tune.report: its run then ends KILLED
    with start_run(name, enabled=setup.link is not None, link=setup.link, params=params,
                   tags={TAG_SWEEP: setup.sweep, TAG_TRIAL: name}) as tracker:
        run_ssl(setup.dataset, source, ssl_config, source_name=cell["source"], out=trial_dir, overwrite=True,
                device=device, tracker=tracker, on_epoch=report,
                data=ssl_data(data.train, data.test, source, ssl_config, data.pools.get(cell["source"])))
    tune.report(final)


def read_inputs(config: SweepConfig) -> tuple[dict[str, str], SweepData]:
    """Fail before starting Ray: every used source reads, every label count fits. Returns the resolved
    sources (name -> source string) and the data the trials share."""
    train = load_dataset(config.dataset, "train", config.root)
    test = load_dataset(config.dataset, "test", config.root)
    for labels in config.grid["labels"]:
        select_indices(train.labels, len(test), config.ssl_config({"labels": labels, "sl_weight": 0.0, "seed": 0}))
    used = config.used_sources()
    weight_alpha = config.ssl_config(config.cells()[0]).weight_alpha  # a train setting: one value for all cells
    resolved: dict[str, str] = {}
    pools: dict[str, UnlabeledPool] = {}
    for name, spec in config.sources.items():
        spec = spec.resolved()
        resolved[name] = str(spec)
        if name in used and spec.kind not in (NONE, REAL):
            try:
                pools[name] = load_sample_set_pool(spec, train.shape, weight_alpha=weight_alpha)
            except (OSError, ValueError) as exc:
                raise ValueError(f"source '{name}' ({spec}): {exc}") from exc
    return resolved, SweepData(train, test, pools)


def _params(config: SweepConfig) -> dict[str, Any]:
    """The sweep's configuration as its run's params (sources as a config file writes them)."""
    return {"name": config.name, "dataset": config.dataset, "grid": config.grid, "train": config.train,
            "sources": {name: str(spec) for name, spec in config.used_sources().items()},
            "baselines": list(config.baselines), "resources_per_trial": config.resources,
            "max_concurrent_trials": config.max_concurrent_trials, "compare_to": config.compare_to,
            "scheduler": asdict(config.scheduler) if config.scheduler is not None else None,
            "trials": len(config.cells())}


def _row(result: Any) -> dict[str, Any]:
    cell = result.config["cell"]
    metrics = result.metrics or {}
    if result.error is not None:
        status = ERROR
    else:
        status = COMPLETED if KEY_TEST_ACC in metrics else STOPPED
    error = "" if result.error is None else str(result.error).strip().splitlines()[-1][:300]
    return {"trial": trial_name(cell), **cell, "status": status, KEY_VAL_ACC: metrics.get(KEY_BEST_VAL_ACC),
            KEY_TEST_ACC: metrics.get(KEY_TEST_ACC), KEY_TEST_ACC_LAST: metrics.get(KEY_TEST_ACC_LAST),
            KEY_BEST_EPOCH: metrics.get(KEY_BEST_EPOCH), "epochs_run": metrics.get(KEY_EPOCH), "error": error}


@dataclass(frozen=True)
class SweepResult(StageResult):
    sweep: str = ""
    trials: int = 0
    tracking_uri: str | None = None
    experiment: str | None = None
    resources_per_trial: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    selected: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    ray_results: str = ""
    scheduler: dict[str, Any] | None = None

    @property
    def message(self) -> str:
        m = self.metrics
        lines = [f"sweep '{self.sweep}': {m[COMPLETED]:.0f}/{self.trials} trials completed ({m[STOPPED]:.0f} "
                 f"stopped early, {m[ERROR]:.0f} failed) in {m['seconds']:.0f} s"]
        if self.best is not None:
            b = self.best
            lines.append(f"best on validation: labels={b['labels']} source={b['source']} w={b['sl_weight']:g} "
                         f"(val {100 * b['val_acc_mean']:.2f} %, test {100 * b['test_acc_mean']:.2f} %, n={b['n']})")
        lines.append(f"tables: {self.files['summary.md']}, {self.files['summary.csv']}")
        if self.tracking_uri:
            lines.append(f"MLflow: experiment '{self.experiment}' at {self.tracking_uri}")
        return "\n".join(lines)


def run_sweep(config: SweepConfig, *, out: str | Path | None = None, address: str | None = None,
              tracker: Tracker | None = None, overwrite: bool = False) -> SweepResult:
    """Run every cell of ``config`` on Ray Tune and write the tables into ``out`` (default: the config's).

    ``tracker`` is the sweep's MLflow run (the trials' parent); without one the trials are not tracked.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tracker = tracker or NullTracker()
    out = Path(out or config.out_dir).expanduser().resolve()
    with output_lock(out):
        refuse_finished(out, overwrite)
        sources, data = read_inputs(config)
        tracker.log_params(_params(config))
        link = tracker.link()
        resources = config.resources
        storage = out / RAY_RESULTS
        setup = TrialSetup(sweep=config.name, dataset=config.dataset, train=dict(config.train),
                           sources=sources, trials_dir=str(storage / config.name), link=link,
                           threads=max(1, int(resources["cpu"])),
                           use_gpu=resources["gpu"] > 0)
        scheduler = None
        if config.scheduler is not None:
            scheduler = ASHAScheduler(time_attr=KEY_EPOCH, max_t=config.ssl_config(config.cells()[0]).epochs,
                                      grace_period=config.scheduler.grace_period,
                                      reduction_factor=config.scheduler.reduction_factor)
        if overwrite and (storage / config.name).exists():
            shutil.rmtree(storage / config.name)
        cells = config.cells()
        init_ray(address)
        started = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_run_trial, setup=setup, data=data), resources),
            param_space={"cell": tune.grid_search(cells)},
            tune_config=tune.TuneConfig(metric=KEY_VAL_ACC, mode="max", scheduler=scheduler,
                                        max_concurrent_trials=config.max_concurrent_trials, reuse_actors=True,
                                        trial_name_creator=_tune_trial_name, trial_dirname_creator=_tune_trial_name),
            run_config=tune.RunConfig(name=config.name, storage_path=str(storage), verbose=int(ray_verbose())),
        )
        # Tune's own Ctrl-C handler ends the run and returns the trials so far as if the sweep had finished
        # (its tables would then be taken for a finished sweep); without it Ctrl-C interrupts like anywhere else
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Tune's banners would corrupt `rgm tune --json`
                grid = tuner.fit()
        except BaseException:
            end_open_children(link)
            raise
        seconds = time.perf_counter() - started
        rows = sorted((_row(result) for result in grid), key=lambda r: cells.index(
            {k: r[k] for k in ("labels", "source", "sl_weight", "seed")}))
        counts = {status: sum(r["status"] == status for r in rows) for status in (COMPLETED, STOPPED, ERROR)}
        if counts[COMPLETED] == 0:
            first = next((r["error"] for r in rows if r["error"]), "no trial reported a test accuracy")
            raise SweepFailedError(f"sweep '{config.name}': no trial completed ({counts[ERROR]} failed; first error: "
                                   f"{first}); Tune logs under {storage / config.name}")
        tables = write_results(out, rows, title=f"Sweep '{config.name}' ({config.dataset})",
                               reference=config.compare_to)
        metrics = {"seconds": seconds, **{k: float(v) for k, v in counts.items()}}
        best = tables["best"] or {}
        tracker.log_metrics({**metrics, **{f"best_{key}": best.get(key) for key in ("val_acc_mean", "test_acc_mean")}})
        for path in tables["files"].values():
            tracker.log_artifact(path)
        return SweepResult(out=str(out), metrics=metrics,
                           sweep=config.name, trials=len(rows), tracking_uri=link.tracking_uri if link else None,
                           experiment=link.experiment_name if link else None, resources_per_trial=resources,
                           best=tables["best"], selected=tables["selected"], files=tables["files"],
                           ray_results=str(storage / config.name),
                           scheduler=None if config.scheduler is None else asdict(config.scheduler))


def refuse_finished(out: str | Path, overwrite: bool) -> None:
    """ArtefactExistsError when ``out`` holds a finished sweep and ``overwrite`` is off."""
    if is_complete(out) and not overwrite:
        raise ArtefactExistsError(f"{out} already holds a finished sweep; pass --overwrite or another --out")


def is_complete(out: str | Path) -> bool:
    """The sweep in ``out`` finished: its tables are written, ``summary.md`` last."""
    return (Path(out) / SUMMARY_MD).is_file()
