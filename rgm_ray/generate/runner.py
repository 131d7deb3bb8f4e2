"""Sharded generation on Ray actors: deterministic, resumable and tolerant of dying workers.

The driver owns the queue of missing shards and hands one shard at a time to each actor. A worker
that dies (killed, OOM) loses only its in-flight shard: Ray restarts the actor (``max_restarts``)
and re-runs the call (``max_task_retries``; at-least-once is safe because the driver's shard writes
are idempotent), drawing the shard again with the same (seed, shard) noise, so the bytes are the
same as if nothing had happened. An actor that is gone for good has its shard put back on the
queue for the others. The driver alone writes shards (atomically), then the manifest.
"""

from __future__ import annotations

import collections
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rgm_ray.generate.plan import GenerationPlan, check_or_write_plan
from rgm_ray.generate.shards import (check_sampler, default_sampler, existing_shard, shard_table,
                                     write_generated_shard)
from rgm_ray.generate.workers import ShardSampler
from rgm_ray.models.checkpoint import checkpoint_digest, read_checkpoint_config
from rgm_ray.runtime import init_ray
from rgm_ray.store import ShardInfo, finish_sample_set, provenance, read_manifest
from rgm_ray.store.manifest import MANIFEST_NAME
from rgm_ray.store.schema import BASE_FIELDS
from rgm_ray.tracking import NullTracker, Tracker

KEY_SAMPLES_PER_SEC = "samples_per_sec"
KEY_WALL_SECONDS = "wall_seconds"
KEY_WORKER_SAMPLES_PER_SEC = "worker_{}_samples_per_sec"
KEY_RETRIED_SHARDS = "retried_shards"
KEY_WORKER_RESTARTS = "worker_restarts"
MAX_RESTARTS = 3


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide to run; none of this changes the bytes produced."""

    workers: int | None = None  # default: as many as the cluster's CPUs (or GPUs) allow
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 64
    address: str | None = None  # None: local Ray (or $RAY_ADDRESS inside a Ray job)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers <= 0:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.batch_size <= 0:
            raise ValueError(f"bad resources: {self}")


@dataclass(frozen=True)
class GenerateConfig:
    """How many samples a pipeline draws per generator, and how they are sharded."""

    num_samples: int = 10_000
    shard_size: int = 1000
    batch_size: int = 64
    seed: int = 0
    sampler_pixelcnnpp: str = "cached"
    sampler_vae: str = "mean"

    def __post_init__(self) -> None:
        if min(self.num_samples, self.shard_size, self.batch_size) <= 0 or self.seed < 0:
            raise ValueError(f"generate: sizes must be positive and seed non-negative, got {self}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerateConfig":
        return cls(**d)

    def sampler_for(self, kind: str) -> str:
        return self.sampler_pixelcnnpp if kind == "pixelcnnpp" else self.sampler_vae


def make_plan(checkpoint: str | Path, *, num_samples: int, shard_size: int, seed: int,
              sampler: str | None = None) -> GenerationPlan:
    kind = read_checkpoint_config(checkpoint)["kind"]
    sampler = sampler or default_sampler(kind)
    check_sampler(kind, sampler)
    return GenerationPlan(checkpoint_digest=checkpoint_digest(checkpoint), kind=kind,
                          num_samples=num_samples, shard_size=shard_size, seed=seed, sampler=sampler)


def _default_workers(options: ClusterOptions, pending: int) -> int:
    import ray

    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        slots = int(resources.get("GPU", 0) // options.gpus_per_worker)
        if slots == 0:
            raise ValueError(f"--gpus-per-worker {options.gpus_per_worker} but the cluster has "
                             f"{resources.get('GPU', 0)} GPUs")
    else:
        slots = int(resources.get("CPU", 1) // options.cpus_per_worker)
    return max(1, min(slots, pending))


def generate_sample_set(checkpoint: str | Path, out: str | Path, plan: GenerationPlan,
                        options: ClusterOptions = ClusterOptions(), *, overwrite: bool = False,
                        tracker: Tracker | None = None, command: str | None = None,
                        progress: Callable[..., Any] | None = None,
                        on_shard_done: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Make ``out`` a finished sample set for ``plan``, drawing only the shards it lacks."""
    tracker = tracker or NullTracker()
    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    check_or_write_plan(out, plan)
    shape = _checkpoint_shape(checkpoint)
    done: dict[int, ShardInfo] = {}
    for index in range(plan.num_shards):
        info = existing_shard(out, plan, index, shape)
        if info is not None:
            done[index] = info
    pending = [i for i in range(plan.num_shards) if i not in done]
    manifest_path = out / MANIFEST_NAME
    if not pending and manifest_path.is_file() and _manifest_matches(out, done):
        return {"out": str(out), "num_samples": plan.num_samples, "generated_shards": 0,
                "reused_shards": len(done), "message": f"{out} is already complete ({plan.num_samples} samples)"}
    if manifest_path.exists():
        manifest_path.unlink()  # the set is being changed: it is not finished until the new manifest

    stats = _run_workers(checkpoint, out, plan, options, pending, done, progress, on_shard_done) if pending else {
        "per_worker": {}, KEY_WALL_SECONDS: 0.0, KEY_RETRIED_SHARDS: 0, KEY_WORKER_RESTARTS: 0, "workers": 0}
    manifest = finish_sample_set(
        out, [done[i] for i in range(plan.num_shards)], shape=shape, source=plan.source,
        columns=[f.name for f in BASE_FIELDS], prov=provenance(command, plan.seed),
        info={"generation": asdict(plan), "checkpoint": str(checkpoint)})
    generated = sum(len(plan.shard_ids(i)) for i in pending)
    wall = stats[KEY_WALL_SECONDS]
    metrics = {KEY_SAMPLES_PER_SEC: generated / wall if wall > 0 else 0.0, KEY_WALL_SECONDS: wall,
               KEY_RETRIED_SHARDS: stats[KEY_RETRIED_SHARDS], KEY_WORKER_RESTARTS: stats[KEY_WORKER_RESTARTS],
               **{KEY_WORKER_SAMPLES_PER_SEC.format(w): v for w, v in stats["per_worker"].items()}}
    tracker.log_metrics(metrics)
    tracker.log_dict(manifest.to_json(), MANIFEST_NAME)
    return {"out": str(out), "num_samples": manifest.num_rows, "shards": len(manifest.shards),
            "generated_shards": len(pending), "reused_shards": len(done) - len(pending),
            "workers": stats["workers"], **metrics,
            "message": f"{out}: {manifest.num_rows} samples in {len(manifest.shards)} shards "
                       f"({len(pending)} generated at {metrics[KEY_SAMPLES_PER_SEC]:.1f} samples/s, "
                       f"{len(done) - len(pending)} reused)"}


def _checkpoint_shape(checkpoint: str | Path) -> tuple[int, int, int]:
    config = read_checkpoint_config(checkpoint)["model_config"]
    return (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))


def _manifest_matches(out: Path, done: dict[int, ShardInfo]) -> bool:
    try:
        recorded = {s.file: s.sha256 for s in read_manifest(out).shards}
    except ValueError:
        return False
    return recorded == {s.file: s.sha256 for s in done.values()}


def _run_workers(checkpoint, out: Path, plan: GenerationPlan, options: ClusterOptions, pending: list[int],
                 done: dict[int, ShardInfo], progress, on_shard_done) -> dict[str, Any]:
    import ray
    from ray.exceptions import RayActorError

    init_ray(options.address)
    n_workers = options.workers or _default_workers(options, len(pending))
    remote_cls = ray.remote(ShardSampler).options(
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
        max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    threads = max(1, int(options.cpus_per_worker))
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    actors = [remote_cls.remote(str(checkpoint), threads, device) for _ in range(n_workers)]
    pids = ray.get([actor.pid.remote() for actor in actors])  # also waits until every model is loaded
    queue = collections.deque(pending)
    idle = list(range(n_workers))
    inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker, shard)
    busy_seconds = collections.Counter()
    samples_by_worker = collections.Counter()
    retried = restarts = 0
    bar = progress(total=plan.num_samples, initial=plan.num_samples - sum(len(plan.shard_ids(i)) for i in pending),
                   desc=f"generate {plan.kind}", unit="img") if progress else None
    started = time.perf_counter()
    try:
        while queue or inflight:
            while queue and idle:
                worker, shard = idle.pop(), queue.popleft()
                inflight[actors[worker].draw_shard.remote(plan, shard, options.batch_size)] = (worker, shard)
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            worker, shard = inflight.pop(ref)
            try:
                index, images, seconds, pid = ray.get(ref)
            except RayActorError as exc:  # restarts and task retries exhausted: the actor is gone
                retried += 1
                queue.appendleft(shard)  # lost in flight: another worker draws it
                if not idle and not inflight:
                    raise RuntimeError("every generation worker died permanently") from exc
                continue
            if pid != pids[worker]:  # the actor died and Ray restarted it; the call was re-run
                restarts += 1
                pids[worker] = pid
            done[index] = write_generated_shard(out, index, shard_table(plan, index, images))
            busy_seconds[worker] += seconds
            samples_by_worker[worker] += len(images)
            idle.append(worker)
            if bar is not None:
                bar.update(len(images))
            if on_shard_done is not None:
                on_shard_done(index, {"worker": worker, "pids": pids,
                                      "inflight": {w: s for w, s in inflight.values()}})
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)
    return {"workers": n_workers, "pids": pids, KEY_WALL_SECONDS: time.perf_counter() - started,
            KEY_RETRIED_SHARDS: retried, KEY_WORKER_RESTARTS: restarts,
            "per_worker": {w: samples_by_worker[w] / busy_seconds[w] for w in busy_seconds if busy_seconds[w] > 0}}
