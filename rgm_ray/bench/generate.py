"""Throughput of sharded generation with 1 and 2 (or more) Ray workers on this machine.

Each worker gets one CPU and one torch thread, so the ideal speed-up with W workers is W; the
target on the 2-core reference machine is >= 1.8x with 2 workers. Model start-up is excluded
(the runner starts its clock once every actor has loaded the model).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from rgm_ray.bench.machine import machine_info
from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.generate.runner import KEY_SAMPLES_PER_SEC, KEY_WALL_SECONDS
from rgm_ray.models.checkpoint import build_model, save_checkpoint
from rgm_ray.models.registry import get_family
from rgm_ray.pipeline.presets import load_preset, section
from rgm_ray.runtime import ClusterOptions
from rgm_ray.store import read_manifest


def bench_generate(*, preset: str = "demo", generator: str = "pixelcnn", sampler: str | None = None,
                   num_samples: int = 1024, shard_size: int = 128, batch_size: int = 64,
                   worker_counts: tuple[int, ...] = (1, 2), seed: int = 0) -> dict[str, Any]:
    """Generate the same set with each worker count; report samples/s and speed-ups."""
    family = get_family(generator)
    config = section(load_preset(preset), family.preset_section)
    torch.manual_seed(seed)
    results: dict[str, Any] = {"preset": preset, "kind": family.kind, "model_config": config.to_dict(),
                               "num_samples": num_samples, "shard_size": shard_size, "batch_size": batch_size,
                               "weights": "random initialisation (throughput does not depend on training)",
                               "machine": machine_info(), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="rgm-bench-generate-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / "ckpt", build_model(family.kind, config.to_dict()))
        results["sampler"] = sampler or family.default_sampler
        hashes = []
        for workers in worker_counts:
            spec = GenerateSpec(checkpoint=str(ckpt), out=str(Path(tmp) / f"w{workers}"), num_samples=num_samples,
                                shard_size=shard_size, seed=seed, sampler=sampler, batch_size=batch_size)
            metrics = generate_sample_set(spec, ClusterOptions(workers=workers)).metrics
            results["runs"][str(workers)] = {"samples_per_sec": metrics[KEY_SAMPLES_PER_SEC],
                                             "wall_seconds": metrics[KEY_WALL_SECONDS]}
            hashes.append([shard.sha256 for shard in read_manifest(spec.out).shards])
        results["identical_bytes_across_worker_counts"] = all(h == hashes[0] for h in hashes)
    base = results["runs"][str(worker_counts[0])]["samples_per_sec"]
    for workers in worker_counts:
        run = results["runs"][str(workers)]
        run["speedup"] = run["samples_per_sec"] / base if base > 0 else None
    return results
