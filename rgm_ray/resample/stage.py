"""The resample stage: draw k rows of a sample set in proportion to their (transformed) weights, on Ray.

Passes over the set, each a round of Ray tasks (one per shard) that read only what they need:

1. *Transform set-up* (only when asked): ``--clip-quantile`` takes 2 rounds of radix selection over
   ``log_weight`` (4 if it is stored as float64) for exact order statistics; ``--target-ess`` takes
   1 + 4 rounds of ESS evaluations, each testing 15 values of α (``sharded.search_alpha``). Nothing
   but counts and sums leaves a shard.
2. *Selection.* Without replacement: one pass over ``sample_id`` + ``log_weight``; every shard sends
   its best candidates for the Gumbel top-k (about twice its share of k, and only those above the
   running threshold), the few shards that may have held back winners are asked again, and the
   driver merges exactly: the result equals ``gumbel_top_k`` on all rows, for any sharding. With
   replacement: a pass for the shard masses, ``split_counts_across_shards``, then a draw in the
   shards that got draws: exact in distribution (a multinomial), but the draw depends on the shard
   layout (same set, seed and layout: same draw).
3. *Rows.* Only the shards holding chosen rows are read again, and only their row groups with them.

The output set holds the chosen rows with ``image``, ``label`` and the *original* ``log_weight``
(before clipping/flattening: the transforms are a sampling choice recorded in the summary, not a
property of the image). Without replacement the rows are in selection order (descending Gumbel key,
so any prefix is itself a weighted sample without replacement); with replacement there is one row
per distinct sample, in ascending ``sample_id``, with ``copies`` summing to k. The summary is stored
in the output manifest's ``info["resample"]`` (everything but the total wall time, known only after
the manifest is written) and logged to MLflow. Each input row counts once: a ``copies`` column in the
input (a set that was itself resampled with replacement) is not read.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import asdict, dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rgm_ray.resample.counter_rng import check_draw_count, check_seed
from rgm_ray.resample.multinomial import split_counts_across_shards
from rgm_ray.resample.sharded import (LogSums, RadixSelect, ShardCandidates, TopKMerger, WeightTransform, lerp,
                                      quantile_ranks, search_alpha, shard_alpha_sums, shard_candidates,
                                      shard_digit_counts, shard_log_sums, shard_multinomial, shard_rows)
from rgm_ray.runtime import init_ray
from rgm_ray.store import (COPIES, IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID, ArtefactExistsError, SampleSet,
                           SampleSetWriter, decode_images, make_table, provenance)
from rgm_ray.tracking import NullTracker, Tracker

# Summary keys, reused as MLflow metric names.
KEY_N = "n"
KEY_N_SUPPORT = "n_support"
KEY_K = "k"
KEY_ALPHA = "alpha"
KEY_ALPHA_SOURCE = "alpha_source"
KEY_LOG_CAP = "log_clip_max"
KEY_ESS_BEFORE = "ess_before"
KEY_ESS_AFTER = "ess_after"
KEY_ESS_FRAC_BEFORE = "ess_frac_before"
KEY_ESS_FRAC_AFTER = "ess_frac_after"
KEY_MAX_SHARE_BEFORE = "max_share_before"
KEY_MAX_SHARE_AFTER = "max_share_after"
KEY_UNIQUE = "unique"
KEY_MAX_COPIES = "max_copies"
KEY_PASSES = "passes"
KEY_CANDIDATES = "candidates"
KEY_REQUERIED = "requeried_shards"
KEY_SELECTION_SECONDS = "selection_seconds"
KEY_WALL_SECONDS = "wall_seconds"
SUMMARY_ARTIFACT = "resample_summary.json"
TASK_RETRIES = 3  # shard tasks only read, so a retry is harmless
REQUEST_FACTOR = 2.0  # candidates asked of a shard, relative to its share of k ...
REQUEST_SLACK = 64  # ... plus this many


@dataclass(frozen=True)
class ResampleConfig:
    """What to draw. ``alpha=None`` means 1 unless ``target_ess`` picks it; clip values are weights."""

    k: int
    seed: int = 0
    replacement: bool = False
    alpha: float | None = None
    target_ess: float | None = None
    target_ess_tol: float = 1e-4
    clip_max: float | None = None
    clip_quantile: float | None = None
    clip_min: float | None = None
    shard_size: int = 10_000  # rows per output shard

    def __post_init__(self) -> None:
        check_draw_count(self.k)
        check_seed(self.seed)
        if self.alpha is not None and self.target_ess is not None:
            raise ValueError("give either alpha or target_ess, not both")
        if self.alpha is not None and not (_is_real(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.target_ess is not None and not (_is_real(self.target_ess) and self.target_ess > 0):
            raise ValueError(f"target_ess must be a positive number, got {self.target_ess!r}")
        if not (_is_real(self.target_ess_tol) and 0.0 < self.target_ess_tol < 1.0):
            raise ValueError(f"target_ess_tol must be in (0, 1), got {self.target_ess_tol!r}")
        if self.clip_max is not None and self.clip_quantile is not None:
            raise ValueError("give at most one of clip_max and clip_quantile")
        for name in ("clip_max", "clip_min"):
            value = getattr(self, name)
            if value is not None and not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite weight, got {value!r}")
        if self.clip_quantile is not None and not (_is_real(self.clip_quantile) and 0.0 < self.clip_quantile <= 1.0):
            raise ValueError(f"clip_quantile must be in (0, 1], got {self.clip_quantile!r}")
        check_draw_count(self.shard_size, "shard_size")


def _is_real(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and not math.isnan(x)


@dataclass(frozen=True)
class Selection:
    """The chosen rows (output order) and the facts the summary reports."""

    ids: np.ndarray  # [rows] sample ids, output order
    copies: np.ndarray | None  # [rows] with replacement, else None
    shards: np.ndarray  # [rows] index of the input shard holding each row
    transform: WeightTransform
    alpha_source: str  # "default" | "given" | "target_ess"
    raw: LogSums  # of the stored log-weights
    transformed: LogSums  # of the log-weights actually sampled from
    passes: int  # rounds of shard tasks before the row pass
    candidates: int  # (id, key) pairs sent to the driver
    requeried: int  # shards asked a second time (their capped candidate list might hide winners)


class ShardRunner:
    """Runs a per-shard function as Ray tasks over a set's shards, at most ``max_inflight`` at a time.

    Arguments are computed at submission (``args_for(shard)``), so a task can use what the driver
    learnt from earlier shards (the top-k threshold). A ``ValueError`` raised in a task (bad
    log-weights) is re-raised as itself, without Ray's wrapping.
    """

    def __init__(self, samples: SampleSet, *, progress: Callable[..., Any] | None = None,
                 max_inflight: int | None = None) -> None:
        import ray

        self.samples = samples
        self.paths = [str(p) for p in samples.shard_paths]
        self.max_inflight = max_inflight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self.progress = progress
        self.rounds = 0
        self._remote: dict[Callable, Any] = {}

    def map(self, fn: Callable, args_for: Callable[[int], tuple], *, shards: list[int] | None = None,
            on_result: Callable[[int, Any], None] | None = None, desc: str = "resample") -> dict[int, Any]:
        """``{shard: fn(path, *args_for(shard))}`` over ``shards`` (default: all), computed in any order.

        With ``on_result`` each result is handed over as it arrives and not kept (1000 shards'
        top-k candidates need not all stay alive); the returned dict is then empty.
        """
        import ray
        from ray.exceptions import RayTaskError

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn).options(num_cpus=1, max_retries=TASK_RETRIES)
        remote = self._remote[fn]
        queue = collections.deque(range(len(self.paths)) if shards is None else shards)
        bar = self.progress(total=len(queue), desc=desc, unit="shard") if self.progress else None
        inflight: dict[Any, int] = {}
        results: dict[int, Any] = {}
        self.rounds += 1
        try:
            while queue or inflight:
                while queue and len(inflight) < self.max_inflight:
                    shard = queue.popleft()
                    inflight[remote.remote(self.paths[shard], *args_for(shard))] = shard
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    shard = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:
                        if isinstance(exc.cause, ValueError):
                            raise exc.cause from None
                        raise
                    if on_result is None:
                        results[shard] = result
                    else:
                        on_result(shard, result)
                    if bar is not None:
                        bar.update(1)
        finally:
            for ref in inflight:
                ray.cancel(ref)
            if bar is not None:
                bar.close()
        return results


def _in_order(results: dict[int, Any]) -> list[Any]:
    return [results[s] for s in sorted(results)]


# --- transforms that need the whole set --------------------------------------------------------


def _quantile_log_cap(runner: ShardRunner, q: float) -> float:
    """The q-quantile of all finite log-weights, exactly as ``np.quantile`` on the gathered column."""
    dtype = pq.read_schema(runner.paths[0]).field(LOG_WEIGHT).type.to_pandas_dtype()
    radix = RadixSelect(np.dtype(dtype), lambda n: quantile_ranks(q, n)[:2])
    while not radix.done:
        queries = radix.queries()
        counts = _in_order(runner.map(shard_digit_counts, lambda s: (queries,), desc="clip quantile"))
        try:
            radix.update(counts)
        except ValueError as exc:  # no finite log-weight at all
            raise ValueError(f"{runner.samples.path}: {exc}") from None
    low, high = radix.values()
    return lerp(low, high, quantile_ranks(q, radix.n_finite)[2])


def _combined_ess(runner: ShardRunner, clip: WeightTransform, alphas: list[float]) -> list[LogSums]:
    per_shard = _in_order(runner.map(shard_alpha_sums, lambda s: (clip, alphas), desc="target ESS"))
    return [LogSums.combine([sums[j] for sums in per_shard]) for j in range(len(alphas))]


def _alpha_for_target_ess(runner: ShardRunner, clip: WeightTransform, target: float, tol: float) -> float:
    """Distributed ``transforms.alpha_for_target_ess`` on the clipped log-weights."""
    [at_one] = _combined_ess(runner, clip, [1.0])
    if target > at_one.n_support:
        raise ValueError(f"{runner.samples.path}: target_ess={target} exceeds the {at_one.n_support} "
                         "samples with non-zero weight")
    if at_one.ess >= target:
        return 1.0
    alpha, _ = search_alpha(lambda alphas: [s.ess for s in _combined_ess(runner, clip, alphas)], target, tol=tol)
    return alpha


def resolve_transform(runner: ShardRunner, config: ResampleConfig) -> tuple[WeightTransform, str]:
    """The transform to sample with (clip limits and α resolved over the whole set) and α's origin."""
    log_floor = math.log(config.clip_min) if config.clip_min is not None else None
    log_cap = math.log(config.clip_max) if config.clip_max is not None else None
    if config.clip_quantile is not None:
        log_cap = _quantile_log_cap(runner, config.clip_quantile)
    try:
        clip = WeightTransform(1.0, log_cap, log_floor)
    except ValueError as exc:
        raise ValueError(f"{runner.samples.path}: {exc}") from None
    if config.target_ess is not None:
        return clip.with_alpha(_alpha_for_target_ess(runner, clip, config.target_ess, config.target_ess_tol)), \
            "target_ess"
    if config.alpha is not None:
        return clip.with_alpha(float(config.alpha)), "given"
    return clip, "default"


# --- selection --------------------------------------------------------------------------------


def _check_support(samples: SampleSet, sums: LogSums, config: ResampleConfig) -> None:
    if sums.n_support == 0:
        raise ValueError(f"{samples.path}: every log_weight is -inf (all weights are 0); nothing to resample")
    if not config.replacement and config.k > sums.n_support:
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {sums.n_support} samples with non-zero "
                         "weight; lower k or use --replacement")


def shard_requests(rows: list[int], k: int) -> list[int]:
    """How many candidates to ask each shard for: twice its share of k by row count, plus slack.

    Far fewer than k per shard (1e8 rows in 1000 shards, k = 1e6: ~2,000 instead of 100,000), and
    enough that, unless the heavy weights cluster in a few shards, no shard has to be asked again.
    """
    total = sum(rows)
    return [min(k, math.ceil(REQUEST_FACTOR * k * r / total) + REQUEST_SLACK) for r in rows]


def _top_k(runner: ShardRunner, config: ResampleConfig, transform: WeightTransform, alpha_source: str) -> Selection:
    merger = TopKMerger(config.k)
    sums: dict[int, tuple[LogSums, LogSums]] = {}
    requests = shard_requests([s.rows for s in runner.samples.manifest.shards], config.k)

    def take(shard: int, found: ShardCandidates) -> None:
        merger.add(shard, found.ids, found.keys, found.cut)
        sums.setdefault(shard, (found.raw, found.transformed))

    runner.map(shard_candidates, lambda s: (transform, requests[s], config.seed, merger.threshold),
               on_result=take, desc="resample: top-k")
    raw, transformed = (LogSums.combine(parts) for parts in zip(*_in_order(sums)))
    _check_support(runner.samples, transformed, config)
    hidden = merger.hiding()
    if hidden:  # capped shards whose unsent rows might still win: ask for everything below their cut
        runner.map(shard_candidates, lambda s: (transform, config.k, config.seed, merger.threshold, hidden[s]),
                   shards=sorted(hidden), on_result=take, desc="resample: re-query")
    ids, shards = merger.finish()
    return Selection(ids=ids, copies=None, shards=shards, transform=transform, alpha_source=alpha_source, raw=raw,
                     transformed=transformed, passes=runner.rounds, candidates=merger.received,
                     requeried=len(hidden))


def _with_replacement(runner: ShardRunner, config: ResampleConfig, transform: WeightTransform,
                      alpha_source: str) -> Selection:
    sums = _in_order(runner.map(shard_log_sums, lambda s: (transform,), desc="resample: masses"))
    raw, transformed = (LogSums.combine(parts) for parts in zip(*sums))
    _check_support(runner.samples, transformed, config)
    per_shard = split_counts_across_shards([t.log_mass for _, t in sums], config.k, config.seed)
    drawn = runner.map(shard_multinomial, lambda s: (transform, int(per_shard[s]), config.seed, s),
                       shards=[int(s) for s in np.flatnonzero(per_shard)], desc="resample: draw")
    ids = np.concatenate([drawn[s][0] for s in sorted(drawn)])
    copies = np.concatenate([drawn[s][1] for s in sorted(drawn)])
    shards = np.concatenate([np.full(drawn[s][0].size, s, dtype=np.int32) for s in sorted(drawn)])
    order = np.argsort(ids, kind="stable")
    return Selection(ids=ids[order], copies=copies[order], shards=shards[order], transform=transform,
                     alpha_source=alpha_source, raw=raw, transformed=transformed, passes=runner.rounds,
                     candidates=int(ids.size), requeried=0)


def select(samples: SampleSet | str | Path, config: ResampleConfig, *, address: str | None = None,
           progress: Callable[..., Any] | None = None) -> Selection:
    """Choose the rows (ids only) on Ray; no images are read."""
    samples = samples if isinstance(samples, SampleSet) else SampleSet(samples)
    samples.require_columns(SAMPLE_ID, LOG_WEIGHT)
    if not config.replacement and config.k > len(samples):
        raise ValueError(f"{samples.path}: k={config.k} exceeds the {len(samples)} rows of the set "
                         "(without replacement); lower k or use --replacement")
    init_ray(address)
    runner = ShardRunner(samples, progress=progress)
    transform, alpha_source = resolve_transform(runner, config)
    draw = _with_replacement if config.replacement else _top_k
    return draw(runner, config, transform, alpha_source)


# --- output -------------------------------------------------------------------------------------


def summarize(samples: SampleSet, config: ResampleConfig, selection: Selection) -> dict[str, Any]:
    """Flat JSON facts of a selection (``max_share_*``: the heaviest row's share of all the weight
    before / after the transforms, i.e. its chance of being the draw when k = 1)."""
    n = len(samples)
    t = selection.transform
    copies = selection.copies
    return {
        "samples": str(samples.path), KEY_N: n, KEY_N_SUPPORT: selection.transformed.n_support, KEY_K: config.k,
        "seed": config.seed, "replacement": config.replacement,
        KEY_ALPHA: t.alpha, KEY_ALPHA_SOURCE: selection.alpha_source, "target_ess": config.target_ess,
        "target_ess_tol": config.target_ess_tol if config.target_ess is not None else None,
        "clip_max": config.clip_max, "clip_quantile": config.clip_quantile, "clip_min": config.clip_min,
        KEY_LOG_CAP: t.log_cap,
        KEY_ESS_BEFORE: selection.raw.ess, KEY_ESS_AFTER: selection.transformed.ess,
        KEY_ESS_FRAC_BEFORE: selection.raw.ess / n, KEY_ESS_FRAC_AFTER: selection.transformed.ess / n,
        KEY_MAX_SHARE_BEFORE: selection.raw.max_share, KEY_MAX_SHARE_AFTER: selection.transformed.max_share,
        KEY_UNIQUE: int(selection.ids.size), KEY_MAX_COPIES: int(copies.max()) if copies is not None else 1,
        "shards": len(samples.shard_paths), KEY_PASSES: selection.passes, KEY_CANDIDATES: selection.candidates,
        KEY_REQUERIED: selection.requeried,
    }


def read_selected_rows(runner: ShardRunner, selection: Selection) -> pa.Table:
    """The selected rows with images, in output order; reads only shards (and row groups) holding them.

    The rows meet on the driver to be put in order, so it holds the output set once (k distinct
    images: 50K CIFAR-10 images = 150 MB), unlike the selection, whose memory does not grow with N.
    """
    order = np.argsort(selection.shards, kind="stable")
    shards, starts = np.unique(selection.shards[order], return_index=True)
    by_shard = {int(s): np.sort(ids) for s, ids in zip(shards, np.split(selection.ids[order], starts[1:]))}
    tables = runner.map(shard_rows, lambda s: (by_shard[s],), shards=sorted(by_shard), desc="resample: rows")
    table = pa.concat_tables(_in_order(tables))
    row_ids = table.column(SAMPLE_ID).to_numpy()
    order = np.argsort(row_ids)
    return table.take(pa.array(order[np.searchsorted(row_ids, selection.ids, sorter=order)]))


def write_selection(samples: SampleSet, out: str | Path, rows: pa.Table, selection: Selection, *,
                    shard_size: int, overwrite: bool, prov: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write the chosen rows (original ``log_weight``; ``copies`` with replacement) as a new sample set."""
    with SampleSetWriter(out, source=samples.source, overwrite=overwrite, prov=prov, info=info) as writer:
        for start in range(0, rows.num_rows, shard_size):
            chunk = rows.slice(start, shard_size)
            extra = {LOG_WEIGHT: chunk.column(LOG_WEIGHT).to_numpy()}
            if selection.copies is not None:
                extra[COPIES] = selection.copies[start:start + chunk.num_rows]
            writer.write(make_table(chunk.column(SAMPLE_ID).to_numpy(),
                                    decode_images(chunk.column(IMAGE), samples.shape),
                                    chunk.column(LABEL).to_numpy(), source=samples.source, extra=extra))
    return Path(out)


def resample_sample_set(samples: str | Path, out: str | Path, config: ResampleConfig, *,
                        address: str | None = None, overwrite: bool = False, tracker: Tracker | None = None,
                        command: str | None = None, progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Select on Ray, write the chosen rows to ``out``, return (and log) the summary."""
    started = time.perf_counter()
    tracker = tracker or NullTracker()
    samples = SampleSet(samples)
    out = Path(out)
    if out.resolve() == samples.path.resolve():
        raise ValueError(f"--out must differ from --samples ({out}): the pool would be replaced by the draw")
    if out.exists() and not overwrite:
        raise ArtefactExistsError(f"{out} already exists; pass --overwrite to replace it")
    selection = select(samples, config, address=address, progress=progress)
    summary = summarize(samples, config, selection)
    summary[KEY_SELECTION_SECONDS] = time.perf_counter() - started
    runner = ShardRunner(samples, progress=progress)
    rows = read_selected_rows(runner, selection)
    write_selection(samples, out, rows, selection, shard_size=config.shard_size, overwrite=overwrite,
                    prov=provenance(command, config.seed), info={"resample": summary, "config": asdict(config)})
    summary[KEY_WALL_SECONDS] = time.perf_counter() - started
    summary["out"] = str(out)
    tracker.log_metrics({key: value for key, value in summary.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None})
    tracker.log_dict(summary, SUMMARY_ARTIFACT)
    how = "with" if config.replacement else "without"
    summary["message"] = (f"{out}: {summary[KEY_UNIQUE]} distinct of {summary[KEY_N]} rows, k={config.k} {how} "
                          f"replacement, alpha={selection.transform.alpha:.4g} ({selection.alpha_source}), "
                          f"ESS {summary[KEY_ESS_BEFORE]:.1f} -> {summary[KEY_ESS_AFTER]:.1f}, largest share "
                          f"{summary[KEY_MAX_SHARE_AFTER]:.3g}, {summary[KEY_WALL_SECONDS]:.1f} s")
    return summary
