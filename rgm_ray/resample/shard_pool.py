"""A pool of Ray tasks over a sample set's shards: one task per shard, a bounded number in flight.

The resample stage makes every global quantity from small per-shard results, so each of its passes
is one ``ShardRunner.map``. Nothing here knows about resampling: a task is any plain function of a
shard's path (tests call the same functions directly, without Ray).
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from rgm_ray.runtime import ClusterOptions, worker_count
from rgm_ray.store import SampleSet

TASK_RETRIES = 3  # shard tasks only read, so a retry is harmless


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
        self.paths = [str(p.resolve()) for p in samples.shard_paths]  # workers have their own cwd
        # two one-CPU tasks queued per CPU keep every core busy while results travel back
        self.max_inflight = max_inflight or 2 * worker_count(ClusterOptions(), ray.cluster_resources())
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


def in_shard_order(results: dict[int, Any]) -> list[Any]:
    """The values of ``{shard: result}`` (``ShardRunner.map``'s answer), by shard index."""
    return [results[s] for s in sorted(results)]
