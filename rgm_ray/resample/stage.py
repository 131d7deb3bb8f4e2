"""The resample stage: draw k rows of a sample set in proportion to their (transformed) weights, on Ray.

Passes over the set, each a round of Ray tasks (one per shard) that read only what they need:

0. *Input check* (``check_input``): every shard is hashed and checked against the manifest (columns,
   types, image sizes, rows, ids), so a set ``rgm data verify`` rejects is never drawn from.
1. *Transform set-up*: ``--clip-quantile`` takes 2 rounds of radix selection over ``log_weight`` (4
   if it is stored as float64) for exact order statistics; ``--target-ess`` (and, without
   ``--alpha``, the default target ``config.default_target_ess``) takes 1 round of ESS evaluation,
   plus 4 rounds each testing 15 values of α when α = 1 misses it (``alpha_search.search_alpha``).
   Nothing but counts and sums leaves a shard.
2. *Selection.* Without replacement: one pass over ``sample_id`` + ``log_weight``; every shard sends
   its best candidates for the Gumbel top-k (about twice its share of k, and only those above the
   running threshold), the few shards that may have held back winners are asked again, and the
   driver merges exactly: the result equals ``gumbel_top_k`` on all rows, for any sharding. With
   replacement: a pass for the shard masses, ``split_counts_across_shards``, then a draw in the
   shards that got draws: exact in distribution (a multinomial), but the draw depends on the shard
   layout (same set, seed and layout: same draw). ``method`` rejection / mh: ``rejection_draw`` /
   ``mh_draw`` (accepted rows in proposal order / one row per visited state with ``copies``).
3. *Rows.* Only the shards holding chosen rows are read again, and only their row groups with them.

The output set holds the chosen rows with ``image``, ``label`` and the *original* ``log_weight``
(before clipping/flattening: the transforms are a sampling choice recorded in the summary, not a
property of the image). Without replacement the rows are in selection order (descending Gumbel key,
so any prefix is itself a weighted sample without replacement); with replacement there is one row
per distinct sample, in ascending ``sample_id``, with ``copies`` summing to k. The summary is stored
in the output manifest's ``info["resample"]`` (everything but the total wall time, known only after
the manifest is written) and logged to MLflow: its measurements as metrics (``alpha`` is the α used,
chosen or given), how α was set as the param ``alpha_source``; the config is the caller's params. Each input row counts once: a ``copies`` column in the
input (a set that was itself resampled with replacement) is not read.

Where the pieces live: ``config`` (what to draw), ``selection`` (passes 1-2, on ``shard_pool``),
``output_set`` (pass 3 and the writing), ``summary`` (the facts and their keys); this module only
wires them together.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.output_set import read_selected_rows, write_selection
from rgm_ray.resample.selection import check_size, select
from rgm_ray.resample.shard_io import ROW_COLUMNS
from rgm_ray.resample.shard_pool import ShardRunner
from rgm_ray.resample.summary import (KEY_ALPHA, KEY_ALPHA_SOURCE, KEY_SELECTION_SECONDS, KEY_WALL_SECONDS,
                                      SUMMARY_ARTIFACT, describe, summarize)
from rgm_ray.results import StageResult
from rgm_ray.runtime import ClusterOptions, init_ray
from rgm_ray.store import ArtefactExistsError, ManifestError, SampleSet, provenance
from rgm_ray.store.completion import check_not_inside
from rgm_ray.store.lineage import log_sample_sets
from rgm_ray.store.lock import output_lock
from rgm_ray.tracking import NullTracker, Tracker

INFO_SUMMARY, INFO_CONFIG = "resample", "config"  # keys of the output manifest's ``info``
# Summary facts that repeat the config: params of the caller's run, not measurements (``alpha`` is the α used).
_CONFIG_FACTS = frozenset(f.name for f in fields(ResampleConfig)) - {KEY_ALPHA}


@dataclass(frozen=True)
class ResampleSpec:
    """Draw from the weighted set ``samples`` into the new set ``out`` as ``config`` says."""

    samples: str
    out: str
    config: ResampleConfig


@dataclass(frozen=True)
class ResampleResult(StageResult):
    summary: dict[str, Any] = field(default_factory=dict)  # every fact (``metrics``: its numbers)

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "out": self.out}

    @property
    def message(self) -> str:
        return describe(self.out, self.summary)


def is_complete(spec: ResampleSpec) -> bool:
    """``spec.out`` is a finished draw from ``spec.samples`` with ``spec.config``."""
    try:
        info = SampleSet(spec.out).manifest.info
    except (ManifestError, FileNotFoundError):
        return False
    return (info.get(INFO_CONFIG) == asdict(spec.config)
            and (info.get(INFO_SUMMARY) or {}).get("samples") == str(SampleSet(spec.samples).path)
            if Path(spec.samples).is_dir() else False)


def check_input(samples: SampleSet, runner: ShardRunner) -> None:
    """Refuse an input ``rgm data verify`` would reject, or one lacking a column the output needs.

    Each shard is hashed and checked in its own Ray task, in parallel on the nodes that read it, not
    on the driver: hashing is a full read of the set (images included) while the selection reads only
    ``sample_id`` and ``log_weight``, so on the driver it would be a serial pass costlier than the
    selection (60 MB of CIFAR-sized images: 0.2 s on the driver, 0.07 s as tasks on 2 CPUs, selection 0.15 s).
    """
    samples.check(ROW_COLUMNS, map_shards=functools.partial(runner.map, desc="resample: check"))


def resample_sample_set(spec: ResampleSpec, cluster: ClusterOptions = ClusterOptions(), *, overwrite: bool = False,
                        tracker: Tracker | None = None, command: str | None = None,
                        progress: Callable[..., Any] | None = None) -> ResampleResult:
    """Select on Ray, write the chosen rows to ``spec.out`` (atomically), return (and log) the summary."""
    started = time.perf_counter()
    tracker = tracker or NullTracker()
    config = spec.config
    samples = SampleSet(spec.samples)
    check_size(samples, config)  # from the manifest: before Ray starts
    out = Path(spec.out)
    with output_lock(out, command=command):
        check_not_inside(out, [samples.path], flag="--out")
        if out.exists() and not overwrite:
            raise ArtefactExistsError(f"{out} already exists; pass --overwrite to replace it")
        init_ray(cluster.address)
        runner = ShardRunner(samples, progress=progress)
        check_input(samples, runner)
        selection = select(samples, config, address=cluster.address, progress=progress)
        summary = summarize(samples, config, selection)
        summary[KEY_SELECTION_SECONDS] = time.perf_counter() - started
        rows = read_selected_rows(runner, selection)
        write_selection(samples, out, rows, selection, shard_size=config.shard_size, overwrite=overwrite,
                        prov=provenance(command, config.seed),
                        info={INFO_SUMMARY: summary, INFO_CONFIG: asdict(config)})
        summary[KEY_WALL_SECONDS] = time.perf_counter() - started
        metrics = {key: value for key, value in summary.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        tracker.log_metrics({key: value for key, value in metrics.items() if key not in _CONFIG_FACTS})
        tracker.log_params({KEY_ALPHA_SOURCE: summary[KEY_ALPHA_SOURCE]})
        tracker.log_dict({**summary, "out": str(out)}, SUMMARY_ARTIFACT)
        log_sample_sets(tracker, [samples.path], context="resampling")
        return ResampleResult(out=str(out), metrics=metrics, summary=summary)
