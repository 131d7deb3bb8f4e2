"""The Ray actor that holds one generator and draws shards on request.

The generator (a checkpoint's model, or a generator plugin for a :class:`PluginPlan`) is loaded once
per actor (in ``__init__``; a restarted actor reloads it). Actors return image arrays rather than
writing files, so the driver alone writes the set: no shared filesystem is needed between the driver
and the workers, and a retried shard can never race a stale writer.
"""

from __future__ import annotations

import os
import time

import numpy as np

from rgm_ray.generate.plan import GenerationPlan, PluginPlan
from rgm_ray.generate.plugins import Plugin
from rgm_ray.models.checkpoint import load_checkpoint
from rgm_ray.models.registry import family_for_kind
from rgm_ray.runtime import autodetect_device, set_torch_threads


class ShardSampler:
    """Plain class (testable without Ray); ``ray.remote`` wraps it in ``runner.py``.

    ``checkpoint`` is the checkpoint directory for a built-in plan and None for a plugin plan.
    """

    def __init__(self, plan: GenerationPlan, checkpoint: str | None, threads: int | None,
                 device: str | None = None) -> None:
        set_torch_threads(threads)
        self.plugin = Plugin(plan.generator, plan.generator_args) if isinstance(plan, PluginPlan) else None
        if self.plugin is None:
            self.device = autodetect_device(device)
            self.model = load_checkpoint(checkpoint, device=self.device)
            self.family = family_for_kind(self.model.kind)

    def pid(self) -> int:
        return os.getpid()

    def draw_shard(self, plan: GenerationPlan, index: int, batch_size: int) -> tuple[int, np.ndarray, float, int]:
        """(shard index, uint8 images, seconds spent sampling, worker pid); a plugin's output is checked."""
        started = time.perf_counter()
        if self.plugin is not None:
            images = self.plugin.draw_shard(plan, index)
        else:
            images = self.family.draw(self.model, len(plan.shard_ids(index)), seed=plan.shard_seed(index),
                                      batch_size=batch_size, sampler=plan.sampler)
        return index, images, time.perf_counter() - started, os.getpid()
