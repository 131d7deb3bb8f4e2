"""Sharded generation on Ray actors: deterministic, resumable and tolerant of dying workers.

The driver owns the queue of missing shards and hands one shard at a time to each actor. A worker
that dies (killed, OOM) loses only its in-flight shard: Ray restarts the actor (``max_restarts``)
and re-runs the call (``max_task_retries``; at-least-once is safe because the driver's shard writes
are idempotent), drawing the shard again with the same (seed, shard) noise, so the bytes are the
same as if nothing had happened. An actor that is gone for good has its shard put back on the
queue for the others, and once the queue is empty an idle worker also draws a shard still in flight
elsewhere: an actor that cannot restart (its node lost, no room left on the others) never answers,
and would otherwise hold the set up for ever. The driver alone writes shards (atomically), then the
manifest.

The generator is a checkpoint or a generator plugin (:mod:`rgm_ray.generate.plugins`); both run on
the same actors with the same guarantees, the plan recording which one drew the set.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rgm_ray.configs import strict_from_dict
from rgm_ray.generate.plan import PLAN_FILE, GenerationPlan, PlanMismatchError, PluginPlan, check_or_write_plan
from rgm_ray.generate.plugins import Plugin, plugin_args
from rgm_ray.generate.shards import existing_shard, shard_table, write_generated_shard
from rgm_ray.generate.workers import ShardSampler
from rgm_ray.models.checkpoint import CONFIG_FILE, checkpoint_digest, load_checkpoint, read_checkpoint_config
from rgm_ray.models.registry import check_sampler, default_sampler, get_family
from rgm_ray.models.training import CHECKPOINT_DIR
from rgm_ray.results import StageResult
from rgm_ray.runtime import ClusterOptions, init_ray, worker_count
from rgm_ray.store import (ManifestError, SampleSet, ShardInfo, finish_sample_set, provenance, read_manifest,
                           shard_name)
from rgm_ray.store.atomic import replace_directory
from rgm_ray.store.completion import check_not_inside
from rgm_ray.store.lock import output_lock
from rgm_ray.store.layout import MANIFEST_NAME, side_file
from rgm_ray.store.schema import BASE_FIELDS
from rgm_ray.tracking import NullTracker, Tracker

KEY_SAMPLES_PER_SEC = "samples_per_sec"
KEY_WALL_SECONDS = "wall_seconds"
KEY_WORKER_SAMPLES_PER_SEC = "worker_{}_samples_per_sec"
KEY_RETRIED_SHARDS = "retried_shards"
KEY_WORKER_RESTARTS = "worker_restarts"
KEY_BACKUP_SHARDS = "backup_shards"  # shards a second worker drew too, at the end of a run (see _next_shard)
MAX_RESTARTS = 3


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
        return strict_from_dict(cls, d, "generate")

    def sampler_for(self, name_or_kind: str) -> str:
        """The preset's sampler for a generator: field ``sampler_<checkpoint kind>``, else the family's default."""
        family = get_family(name_or_kind)
        return getattr(self, f"sampler_{family.kind}", family.default_sampler)


def make_plan(checkpoint: str | Path, *, num_samples: int, shard_size: int, seed: int,
              sampler: str | None = None) -> GenerationPlan:
    kind = read_checkpoint_config(checkpoint)["kind"]
    sampler = sampler or default_sampler(kind)
    check_sampler(kind, sampler)
    return GenerationPlan(checkpoint_digest=checkpoint_digest(checkpoint), kind=kind,
                          num_samples=num_samples, shard_size=shard_size, seed=seed, sampler=sampler)


@dataclass(frozen=True)
class GenerateSpec:
    """What to draw: ``num_samples`` images of ``checkpoint``, or of the plugin ``generator``, into the set ``out``.

    Exactly one of ``checkpoint`` and ``generator`` is given; ``out`` and ``num_samples`` are required
    (their defaults only let ``checkpoint`` be left out).
    """

    checkpoint: str | None = None  # a checkpoint directory or the ``rgm train`` run directory holding one
    out: str = ""
    num_samples: int = 0
    shard_size: int = 1000
    seed: int = 0
    sampler: str | None = None  # None: the generator family's default (fastest exact) sampler
    batch_size: int = 64  # checkpoints only: a plugin batches as it likes
    generator: str | None = None  # a generator plugin, "package.module:factory" (see generate.plugins)
    generator_args: tuple[tuple[str, Any], ...] = ()  # the factory's keyword arguments (a mapping will do)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if (self.checkpoint is None) == (self.generator is None):
            raise ValueError("give exactly one of checkpoint and generator (a plugin 'package.module:factory')")
        if not self.out:
            raise ValueError("out, the sample set's directory, is required")
        if self.generator is None and self.generator_args:
            raise ValueError("generator_args are a generator plugin's; give generator too")
        if self.generator is not None and self.sampler is not None:
            raise ValueError(f"sampler {self.sampler!r} is for checkpoints; a generator plugin samples its own way")
        object.__setattr__(self, "generator_args", plugin_args(self.generator_args))

    @property
    def checkpoint_dir(self) -> Path | None:
        """The checkpoint directory itself (``rgm train``'s run directory is accepted for it); None for a plugin."""
        if self.checkpoint is None:
            return None
        nested = Path(self.checkpoint) / CHECKPOINT_DIR
        return nested if (nested / CONFIG_FILE).is_file() else Path(self.checkpoint)

    def plan(self) -> GenerationPlan:
        """The set's plan; a plugin is loaded and probed here, on the driver, so a broken one fails in one line."""
        if self.generator is not None:
            return Plugin(self.generator, self.generator_args).plan(
                num_samples=self.num_samples, shard_size=self.shard_size, seed=self.seed)
        return make_plan(self.checkpoint_dir, num_samples=self.num_samples, shard_size=self.shard_size,
                         seed=self.seed, sampler=self.sampler)


@dataclass(frozen=True)
class GenerateResult(StageResult):
    num_samples: int = 0
    shards: int = 0
    generated_shards: int = 0
    reused_shards: int = 0
    redrawn_shards: int = 0  # of the generated: on disk but damaged or drawn by another plan (e.g. seed)
    workers: int = 0

    @property
    def message(self) -> str:
        if not self.generated_shards:
            return f"{self.out} is already complete ({self.num_samples} samples)"
        redrawn = (f", {self.redrawn_shards} of them redrawn over damaged shards or shards of another plan"
                   if self.redrawn_shards else "")
        return (f"{self.out}: {self.num_samples} samples in {self.shards} shards ({self.generated_shards} "
                f"generated at {self.metrics[KEY_SAMPLES_PER_SEC]:.1f} samples/s{redrawn}, "
                f"{self.reused_shards} reused)")


def is_complete(spec: GenerateSpec) -> bool:
    """``spec.out`` is a finished set drawn with exactly ``spec``'s plan (shard hashes: ``rgm data verify``)."""
    try:
        SampleSet(spec.out)
    except (ManifestError, OSError):
        return False
    return _holds_plan(Path(spec.out), spec.plan())


def generate_sample_set(spec: GenerateSpec, cluster: ClusterOptions = ClusterOptions(), *,
                        overwrite: bool = False, tracker: Tracker | None = None, command: str | None = None,
                        progress: Callable[..., Any] | None = None,
                        on_shard_done: Callable[[int, dict[str, Any]], None] | None = None) -> GenerateResult:
    """Make ``spec.out`` a finished sample set for ``spec``, drawing only the shards it lacks.

    ``overwrite`` replaces a set made with other settings, but only once the new one is complete: it
    is drawn in a hidden sibling directory (re-running the same command resumes there) and swapped
    in at the end, so a failure never costs the old set.
    """
    tracker = tracker or NullTracker()
    checkpoint, out = spec.checkpoint_dir, Path(spec.out)
    with output_lock(out, command=command):
        if spec.checkpoint is not None:
            check_not_inside(out, [spec.checkpoint], flag="--out")
        plan = spec.plan()
        target = out
        if overwrite and out.exists() and not _holds_plan(out, plan):
            if not (side_file(out, PLAN_FILE).is_file() or side_file(out, MANIFEST_NAME).is_file()):
                raise PlanMismatchError(f"{out} is not empty and was not written by 'rgm generate'; --overwrite "
                                        "replaces only sample sets, choose another --out")
            target = out.with_name(f".{out.name}.overwrite")
            if target.exists() and not _holds_plan(target, plan):
                shutil.rmtree(target)  # our own staging, from an overwrite with other settings
        result = _fill(checkpoint, target, plan, cluster, spec.batch_size, tracker, command, progress, on_shard_done)
        if target != out:  # the new set is complete: only now does the old one go
            replace_directory(target, out)
        return dataclasses.replace(result, out=str(out))


def _holds_plan(directory: Path, plan: GenerationPlan) -> bool:
    try:
        return json.loads(side_file(directory, PLAN_FILE).read_text()) == plan.to_dict()
    except (OSError, ValueError):
        return False


def _fill(checkpoint: Path | None, out: Path, plan: GenerationPlan, cluster: ClusterOptions, batch_size: int,
          tracker: Tracker, command: str | None, progress, on_shard_done) -> GenerateResult:
    """Draw the shards ``out`` lacks for ``plan`` (of ``checkpoint``, None for a plugin) and write its manifest."""
    check_or_write_plan(out, plan)  # from here on ``out`` has the new layout (its side files' new names)
    shape = plan.image_shape if isinstance(plan, PluginPlan) else _checkpoint_shape(checkpoint)
    done: dict[int, ShardInfo] = {}
    for index in range(plan.num_shards):
        info = existing_shard(out, plan, index, shape)
        if info is not None:
            done[index] = info
    pending = [i for i in range(plan.num_shards) if i not in done]
    redrawn = sum((out / shard_name(i)).is_file() for i in pending)
    manifest_path = out / MANIFEST_NAME
    if not pending and manifest_path.is_file() and _manifest_matches(out, done):
        return GenerateResult(out=str(out), num_samples=plan.num_samples, shards=plan.num_shards,
                              reused_shards=len(done))
    if manifest_path.exists():
        manifest_path.unlink()  # the set is being changed: it is not finished until the new manifest
    if pending and checkpoint is not None:  # (a plugin was probed when it was planned)
        load_checkpoint(checkpoint)  # a broken checkpoint fails here in one line, not in every actor

    stats = _run_workers(checkpoint, out, plan, cluster, batch_size, pending, done, progress, on_shard_done) \
        if pending else {"per_worker": {}, KEY_WALL_SECONDS: 0.0, KEY_RETRIED_SHARDS: 0, KEY_WORKER_RESTARTS: 0,
                         KEY_BACKUP_SHARDS: 0, "workers": 0}
    info = {"generation": plan.to_dict()}
    if checkpoint is not None:
        info["checkpoint"] = str(checkpoint)
    manifest = finish_sample_set(
        out, [done[i] for i in range(plan.num_shards)], shape=shape, source=plan.source,
        columns=[f.name for f in BASE_FIELDS], prov=provenance(command, plan.seed), info=info)
    generated = sum(len(plan.shard_ids(i)) for i in pending)
    wall = stats[KEY_WALL_SECONDS]
    metrics = {KEY_SAMPLES_PER_SEC: generated / wall if wall > 0 else 0.0, KEY_WALL_SECONDS: wall,
               KEY_RETRIED_SHARDS: stats[KEY_RETRIED_SHARDS], KEY_WORKER_RESTARTS: stats[KEY_WORKER_RESTARTS],
               KEY_BACKUP_SHARDS: stats[KEY_BACKUP_SHARDS],
               **{KEY_WORKER_SAMPLES_PER_SEC.format(w): v for w, v in stats["per_worker"].items()}}
    tracker.log_metrics(metrics)
    tracker.log_dict(manifest.to_json(), MANIFEST_NAME)
    return GenerateResult(out=str(out), metrics=metrics, num_samples=manifest.num_rows, shards=len(manifest.shards),
                          generated_shards=len(pending), reused_shards=len(done) - len(pending),
                          redrawn_shards=redrawn, workers=stats["workers"])


def _checkpoint_shape(checkpoint: str | Path) -> tuple[int, int, int]:
    config = read_checkpoint_config(checkpoint)["model_config"]
    return (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))


def _manifest_matches(out: Path, done: dict[int, ShardInfo]) -> bool:
    try:
        recorded = {s.file: s.sha256 for s in read_manifest(out).shards}
    except ValueError:
        return False
    return recorded == {s.file: s.sha256 for s in done.values()}


def _next_shard(queue: collections.deque, inflight: dict[Any, tuple[int, int]],
                done: dict[int, ShardInfo]) -> int | None:
    """The shard an idle worker draws next: a queued one, else a second copy of the oldest shard that is
    in flight on one worker only (None when there is none).

    The copies are the same bytes (a shard's noise is a function of (seed, shard)); whichever answers
    first is written and the other is dropped. So a worker that never answers cannot hold the set up:
    one whose node is gone and whose actor has no room to restart on the nodes that are left (Ray then
    waits for resources for ever), or just a slow one at the end of the run.
    """
    if queue:
        return queue.popleft()
    copies = collections.Counter(shard for _, shard in inflight.values() if shard not in done)
    return next((shard for shard, n in copies.items() if n == 1), None)


def _run_workers(checkpoint: Path | None, out: Path, plan: GenerationPlan, cluster: ClusterOptions, batch_size: int,
                 pending: list[int], done: dict[int, ShardInfo], progress, on_shard_done) -> dict[str, Any]:
    import ray
    from ray.exceptions import RayActorError

    init_ray(cluster.address)
    n_workers = worker_count(cluster, ray.cluster_resources(), pending=len(pending))
    remote_cls = ray.remote(ShardSampler).options(
        num_cpus=cluster.cpus_per_worker, num_gpus=cluster.gpus_per_worker,
        max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    checkpoint_path = None if checkpoint is None else str(checkpoint.resolve())
    actors = [remote_cls.remote(plan, checkpoint_path, cluster.threads, cluster.device) for _ in range(n_workers)]
    pids = ray.get([actor.pid.remote() for actor in actors])  # also waits until every model is loaded
    queue = collections.deque(pending)
    idle = list(range(n_workers))
    inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker, shard)
    busy_seconds = collections.Counter()
    samples_by_worker = collections.Counter()
    retried = restarts = backups = 0
    bar = progress(total=plan.num_samples, initial=plan.num_samples - sum(len(plan.shard_ids(i)) for i in pending),
                   desc=f"generate {plan.kind}", unit="img") if progress else None
    started = time.perf_counter()
    try:
        while queue or any(shard not in done for _, shard in inflight.values()):
            while idle and (shard := _next_shard(queue, inflight, done)) is not None:
                worker = idle.pop()
                inflight[actors[worker].draw_shard.remote(plan, shard, batch_size)] = (worker, shard)
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            worker, shard = inflight.pop(ref)
            try:
                index, images, seconds, pid = ray.get(ref)
            except RayActorError as exc:  # restarts and task retries exhausted: the actor is gone
                retried += 1
                if shard not in done and shard not in (s for _, s in inflight.values()):
                    queue.appendleft(shard)  # lost in flight: another worker draws it
                if not idle and not inflight:
                    raise RuntimeError("every generation worker died permanently") from exc
                continue
            if pid != pids[worker]:  # the actor died and Ray restarted it; the call was re-run
                restarts += 1
                pids[worker] = pid
            idle.append(worker)
            if index in done:  # the slower of two copies (see _next_shard): the same bytes, already written
                continue
            backups += any(s == index for _, s in inflight.values())  # its other copy is still out
            done[index] = write_generated_shard(out, index, shard_table(plan, index, images))
            busy_seconds[worker] += seconds
            samples_by_worker[worker] += len(images)
            if bar is not None:
                bar.update(len(images))
            if on_shard_done is not None:
                on_shard_done(index, {"worker": worker, "pids": pids,
                                      "inflight": {w: s for w, s in inflight.values()}})
    finally:
        if bar is not None:
            bar.close()
        for ref in inflight:  # backup copies still out: cancelled, or Ray reports each kill as a failed call
            ray.cancel(ref)
        for actor in actors:
            ray.kill(actor)
    return {"workers": n_workers, "pids": pids, KEY_WALL_SECONDS: time.perf_counter() - started,
            KEY_RETRIED_SHARDS: retried, KEY_WORKER_RESTARTS: restarts, KEY_BACKUP_SHARDS: backups,
            "per_worker": {w: samples_by_worker[w] / busy_seconds[w] for w in busy_seconds if busy_seconds[w] > 0}}
