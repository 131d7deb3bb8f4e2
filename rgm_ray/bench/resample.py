"""Benchmark of resampling: in-process Gumbel top-k vs NumPy, and the sharded selection on Ray.

Part 1 (in process): ``gumbel_top_k`` against ``Generator.choice(N, k, replace=False, p=w̃)`` on the
same log-weights (normalising them into ``p`` is counted in NumPy's time; both are best of
``REPEATS``). Part 2 (on disk): N log-weights in Parquet shards (a real sample set whose images are a
single byte, so disk holds mostly ids and weights), selected by ``resample.selection.select`` on local
Ray, with the time to merely read the ``log_weight`` column (and ``sample_id`` + ``log_weight``, what
the selection reads) through the same tasks beside it, and the time of the resample stage's input check
(every shard hashed and checked, one task per shard).

Both parts also time the other methods on the same weights (``methods``): rejection sampling
(``rejection_sample``; on disk ``--method rejection``) and independence Metropolis–Hastings
(``mh_resample``; on disk ``--method mh``, a chain of k states), each checked against its
single-process reference up to 1e7 rows. α is fixed at 1 everywhere, so the numbers time the draws;
the stage's default α adds one pass reading only ``log_weight`` when the weights already have ESS ≥ k.

The machine may be shared, so beside each wall time the CPU time used by the driver, its Ray workers
and Ray's daemons is reported, divided by the core count: the wall time the run would take if it
had the cores to itself and kept them busy. Memory is watched in ``/proc`` (see ``ProcessWatcher``).

Linux only (``/proc``). The data set is written once into ``workdir`` and reused.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from rgm_ray.resample import gumbel_top_k, mh_resample, rejection_log_bound, rejection_sample
from rgm_ray.resample.config import METHODS, ResampleConfig
from rgm_ray.resample.selection import select
from rgm_ray.resample.shard_pool import ShardRunner
from rgm_ray.resample.stage import check_input
from rgm_ray.runtime import init_ray
from rgm_ray.seeding import numpy_rng
from rgm_ray.store import LOG_WEIGHT, SAMPLE_ID, SampleSet, finish_sample_set, make_table, write_shard
from rgm_ray.store.layout import MANIFEST_NAME, side_file
from rgm_ray.weigh.transforms import self_normalize

DEFAULT_N_DISK = 100_000_000
DEFAULT_SHARDS = 1000
REPEATS = 3
TARGET_SPEEDUP = 5.0
TARGET_SELECT_SECONDS = 10.0
TARGET_METHOD_SECONDS = 15.0  # rejection and mh (issue 16), N = 1e8 in 1000 shards on 2 cores
TARGET_PEAK_RSS_BYTES = 2 * 1024**3
LOG_WEIGHT_SCALE = 1.0  # log-weights ~ Normal(0, 1): moderately skewed weights
POLL_SECONDS = 0.05  # reading statm costs ~20 µs a process
RESCAN_POLLS = 40  # look for new processes every 2 s (a /proc scan costs milliseconds)
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def bench_resample(n: int = 10_000_000, k: int = 1_000_000, *, shards: int | None = None,
                   n_disk: int | None = None, seed: int = 0, workdir: str | Path | None = None,
                   methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """Both parts as one JSON-able dict. ``n_disk`` defaults to 1e8 in ``shards`` (default 1000)
    shards; ``n_disk=0`` skips the on-disk part. The sharded part runs first so the in-process
    arrays do not inflate the driver's peak RSS. SIR's numbers are at the top of each part, the
    other ``methods``' under ``"methods"``."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown resample method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    n_disk = DEFAULT_N_DISK if n_disk is None else n_disk
    shards = DEFAULT_SHARDS if shards is None else shards
    result: dict[str, Any] = {"load_average_start": list(os.getloadavg()), "cpus": os.cpu_count(),
                              "log_weights": f"normal(0, {LOG_WEIGHT_SCALE:g})"}
    if n_disk:
        workdir = Path(workdir) if workdir is not None else Path(tempfile.gettempdir()) / "rgm_bench_resample"
        result["sharded"] = bench_sharded(n_disk, shards, min(k, n_disk), seed=seed, workdir=workdir,
                                          methods=methods)
    result["in_process"] = bench_in_process(n, k, seed=seed, methods=methods)
    result["load_average_end"] = list(os.getloadavg())
    return result


# --- part 1 -----------------------------------------------------------------------------------


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """``(best time, all times, the last result)``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), times, result


def bench_in_process(n: int, k: int, *, seed: int = 0, repeats: int = REPEATS,
                     methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    lw = numpy_rng(seed, 0).normal(scale=LOG_WEIGHT_SCALE, size=n)
    ids = np.arange(n, dtype=np.int64)
    gumbel_top_k(lw[:1000], ids[:1000], 10, seed)  # warm-up: imports and first-call costs
    gumbel_best, gumbel_all, _ = _best_of(lambda: gumbel_top_k(lw, ids, k, seed), repeats)
    numpy_best, numpy_all, _ = _best_of(
        lambda: numpy_rng(seed, 1).choice(n, size=k, replace=False, p=self_normalize(lw)), repeats)
    result = {"n": n, "k": k, "gumbel_top_k_seconds": gumbel_best, "numpy_choice_seconds": numpy_best,
              "speedup": numpy_best / gumbel_best, "target_speedup": TARGET_SPEEDUP,
              "meets_target": numpy_best / gumbel_best >= TARGET_SPEEDUP,
              "gumbel_top_k_all_seconds": gumbel_all, "numpy_choice_all_seconds": numpy_all, "methods": {}}
    if "rejection" in methods:
        best, _, (accepted, counts) = _best_of(
            lambda: rejection_sample(lw, ids, k, seed, rejection_log_bound(lw)), repeats)
        result["methods"]["rejection"] = {"seconds": best, "rows": int(accepted.size), "accepted": counts.accepted,
                                          "proposals_per_accepted": n / counts.expected}
    if "mh" in methods and k <= n:
        best, _, (state_ids, _, chain) = _best_of(lambda: mh_resample(lw, ids, k, seed), repeats)
        result["methods"]["mh"] = {"seconds": best, "chain_length": k, "distinct_states": int(state_ids.size),
                                   "acceptance_rate": chain.acceptance_rate}
    return result


# --- part 2 -----------------------------------------------------------------------------------


def write_weight_set(out: Path, n: int, shards: int, seed: int) -> dict[str, Any]:
    """A sample set of ``n`` rows with 1-byte images and Normal log-weights, written once: reused
    when its manifest exists, else (re)written shard by shard (each shard write is atomic)."""
    if side_file(out, MANIFEST_NAME).is_file():
        return {"reused": True}
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    infos = []
    for shard in range(shards):
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        lw = numpy_rng(seed, shard).normal(scale=LOG_WEIGHT_SCALE, size=hi - lo).astype(np.float32)
        table = make_table(np.arange(lo, hi), np.zeros((hi - lo, 1, 1, 1), np.uint8), None,
                           source="bench:resample", extra={LOG_WEIGHT: lw})
        infos.append(write_shard(out, shard, table))
    finish_sample_set(out, infos, shape=(1, 1, 1), source="bench:resample",
                      columns=table.schema.names, info={"bench": "resample", "seed": seed})
    return {"reused": False, "write_seconds": time.perf_counter() - started}


def read_columns(path: str, columns: tuple[str, ...]) -> int:
    """Read some columns of one shard and drop them (the I/O + decode floor); returns the rows read."""
    return pq.ParquetFile(path).read(columns=list(columns), use_threads=False).num_rows


def warm_up(path: str) -> int:
    """Occupy a worker briefly, so that every worker slot gets a started, imported process."""
    time.sleep(0.5)
    return os.getpid()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, stack = _children(), [], [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _is_worker(pid: int) -> bool:
    """Ray workers retitle themselves ``ray::IDLE`` / ``ray::<task>``; its agents end in ``Agent``."""
    try:
        with open(f"/proc/{pid}/cmdline") as fh:
            title = fh.read().split("\0")[0]
    except OSError:
        return False
    return title.startswith("ray::") and not title.endswith("Agent")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _proc_kib_field(pid: int, file: str, field: str) -> int:
    """The ``<field> N kB`` line of ``/proc/<pid>/<file>``, in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (e.g. torch's libraries) divided among their sharers.

    Reading it costs ~20 ms for a process that loaded torch, far too much to poll on 2 cores.
    """
    return _proc_kib_field(pid, "smaps_rollup", "Pss:")


def _hwm(pid: int) -> int:
    return _proc_kib_field(pid, "status", "VmHWM:")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # fields[0] is field 3 of proc(5)
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


class ProcessWatcher:
    """Polls the driver, its Ray workers and Ray's daemons: peaks of their summed RSS, and the CPU
    time they used (which, unlike wall time, does not grow when other users load the machine).

    RSS counts pages shared between processes (torch's libraries, object-store mappings) once per
    process; PSS splits them among the sharers, so its sum is the memory the processes really hold.
    PSS is too costly to poll, so it is read before the run, and its peak is bounded by that plus the
    growth of the RSS sum (a new page adds at most its full size to either).
    """

    def __init__(self) -> None:
        self.driver = os.getpid()
        self.peak_rss = 0
        self.peak_daemons_rss = 0
        self.workers: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        watched = self._scan()[0]
        self.idle_rss, self.idle_pss = sum(map(_rss, watched)), sum(map(_pss, watched))

    def _scan(self) -> tuple[list[int], list[int]]:
        """(driver + workers, Ray daemons)."""
        ray_pids = _descendants(self.driver)
        workers = [p for p in ray_pids if _is_worker(p)]
        self.workers.update(workers)
        return [self.driver, *workers], [p for p in ray_pids if p not in workers]

    def __enter__(self) -> "ProcessWatcher":
        pids = [self.driver, *_descendants(self.driver)]
        for pid in pids:
            _reset_peak(pid)
        self._cpu_start = {pid: _cpu_seconds(pid) for pid in pids}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        watched, daemons = self._scan()
        used = {pid: _cpu_seconds(pid) - self._cpu_start.get(pid, 0.0) for pid in watched + daemons}
        self.cpu_watched = sum(used[p] for p in watched)
        self.cpu_daemons = sum(used[p] for p in daemons)

    def _run(self) -> None:
        polls = 0
        while not self._stop.is_set():
            if polls % RESCAN_POLLS == 0:  # scanning /proc costs more than reading a few files
                watched, daemons = self._scan()
            polls += 1
            self.peak_rss = max(self.peak_rss, sum(map(_rss, watched)))
            self.peak_daemons_rss = max(self.peak_daemons_rss, sum(map(_rss, daemons)))
            self._stop.wait(POLL_SECONDS)

    def memory_report(self) -> dict[str, Any]:
        worker_peaks = [_hwm(p) for p in sorted(self.workers)]
        driver_peak = _hwm(self.driver)
        return {"driver_peak_rss": driver_peak, "worker_peak_rss": worker_peaks,
                "sum_of_peak_rss": driver_peak + sum(worker_peaks),
                "sampled_peak_rss_sum": self.peak_rss, "idle_rss_sum": self.idle_rss,
                "idle_pss_sum": self.idle_pss, "peak_pss_sum_bound": self.idle_pss + self.peak_rss - self.idle_rss,
                "ray_daemons_sampled_peak_rss": self.peak_daemons_rss}

    def cpu_report(self) -> dict[str, float]:
        cpus = os.cpu_count() or 1
        return {"cpu_seconds_driver_and_workers": self.cpu_watched, "cpu_seconds_ray_daemons": self.cpu_daemons,
                "wall_seconds_if_cores_were_ours": (self.cpu_watched + self.cpu_daemons) / cpus}


def _watched(run: Callable[[], Any]) -> tuple[Any, float, ProcessWatcher]:
    """``(run(), wall seconds, watcher)``."""
    with ProcessWatcher() as watcher:
        started = time.perf_counter()
        result = run()
        wall = time.perf_counter() - started
    return result, wall, watcher


def _bench_select(samples: SampleSet, config: ResampleConfig, target_seconds: float) -> tuple[Any, dict[str, Any]]:
    """``(selection, its time, CPU, memory and targets)`` of one ``select`` on the set."""
    selection, seconds, watcher = _watched(lambda: select(samples, config))
    memory = watcher.memory_report()
    return selection, {
        "select_seconds": seconds, **watcher.cpu_report(), "passes": selection.passes,
        "requeried_shards": selection.requeried, "candidates_sent": selection.candidates,
        "ess": selection.transformed.ess, "memory_bytes": memory,
        "target_select_seconds": target_seconds, "target_peak_rss_bytes": TARGET_PEAK_RSS_BYTES,
        "meets_time_target": seconds <= target_seconds,
        "meets_memory_target_rss": memory["sampled_peak_rss_sum"] <= TARGET_PEAK_RSS_BYTES,
        "meets_memory_target_pss": memory["peak_pss_sum_bound"] <= TARGET_PEAK_RSS_BYTES}


def _equals_reference(selection: Any, method: str, lw: np.ndarray, ids: np.ndarray, k: int, seed: int) -> bool:
    """The sharded selection is the single-process function's on all rows (α = 1)."""
    if method == "sir":
        return bool(np.array_equal(selection.ids, gumbel_top_k(lw, ids, k, seed)))
    if method == "rejection":
        return bool(np.array_equal(selection.ids, rejection_sample(lw, ids, k, seed, rejection_log_bound(lw))[0]))
    state_ids, copies, _ = mh_resample(lw, ids, k, seed)
    return bool(np.array_equal(selection.ids, state_ids) and np.array_equal(selection.copies, copies))


def bench_sharded(n: int, shards: int, k: int, *, seed: int, workdir: Path,
                  methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    path = workdir / f"weights_n{n}_s{shards}_seed{seed}"
    written = write_weight_set(path, n, shards, seed)
    samples = SampleSet(path)
    started = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - started
    runner = ShardRunner(samples)
    started = time.perf_counter()  # workers start and import rgm_ray (torch) on first use
    runner.map(warm_up, lambda s: (), shards=list(range(min(shards, runner.max_inflight))), desc="bench")
    warmup = time.perf_counter() - started
    reads = {}
    for name, columns in (("log_weight", (LOG_WEIGHT,)), ("sample_id_and_log_weight", (SAMPLE_ID, LOG_WEIGHT))):
        _, wall, watcher = _watched(lambda: runner.map(read_columns, lambda s: (columns,), desc="bench"))
        reads[f"read_{name}_seconds"] = wall
        reads[f"read_{name}_seconds_if_cores_were_ours"] = watcher.cpu_report()["wall_seconds_if_cores_were_ours"]
    _, reads["input_check_seconds"], _ = _watched(lambda: check_input(samples, runner))  # the stage's hashing pass
    result = {"n": n, "shards": shards, "k": k, "dataset": str(path),
              "dataset_bytes": sum(p.stat().st_size for p in samples.shard_paths), **written,
              "ray_start_seconds": ray_start, "worker_warmup_seconds": warmup, **reads, "methods": {}}
    selections = {}
    for method in methods:
        selection, report = _bench_select(samples, ResampleConfig(k=k, seed=seed, alpha=1.0, method=method),
                                          TARGET_SELECT_SECONDS if method == "sir" else TARGET_METHOD_SECONDS)
        selections[method] = selection
        if method == "sir":
            result.update(report)
        else:
            result["methods"][method] = {**report, "rows": int(selection.ids.size), **selection.facts}
    if n <= 10_000_000:  # small enough to check against the single-process reference
        data = samples.read([SAMPLE_ID, LOG_WEIGHT])
        lw, ids = data[LOG_WEIGHT].astype(np.float64), data[SAMPLE_ID]
        for method, selection in selections.items():
            equal = _equals_reference(selection, method, lw, ids, k, seed)
            if method == "sir":
                result["equals_gumbel_top_k"] = equal
            else:
                result["methods"][method]["equals_reference"] = equal
    return result
