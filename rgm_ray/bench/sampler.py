"""Naive vs cached PixelCNN++ sampling throughput (issue 4), and projections to 150K images.

The naive sampler costs exactly one full forward pass per pixel, so it is timed over a few forward
passes at each batch size and scaled by H*W; the cached sampler is timed end to end (noise,
all steps, pixel draws). Weights are a seeded random initialisation: the cost of sampling does not
depend on what the model has learned.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from rgm_ray.bench.machine import machine_info
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig, eval_no_grad
from rgm_ray.models.pixelcnnpp_cache_plan import build_plan
from rgm_ray.models.pixelcnnpp_cached import cache_shapes
from rgm_ray.models.pixelcnnpp_sampling import sample_pixelcnnpp

PROJECTION_IMAGES = 150_000  # the thesis's generated set per model
METHOD = {
    "naive": "mean wall time of `naive_steps` full forward passes at the batch size (after one warm-up "
    "pass), times H*W: the naive sampler runs one full forward pass per pixel",
    "cached": "wall time of sample_pixelcnnpp(..., sampler='cached') for `cached_images` images at the batch "
    "size, end to end (noise, every step, pixel draws); the per-config plan is built beforehand "
    "(plan_build_seconds)",
    "speedup": "naive seconds per image / cached seconds per image",
    "forward_gflops_per_image": "2 x multiply-adds of one full forward pass over non-padding taps; the "
    "cached sampler computes this once per image, the naive sampler H*W times",
    "cache_mb_per_image": "float32 activation caches the cached sampler holds per image in the batch",
    "load_average_1m": "the machine's 1-minute load average when each row started: other processes "
    "sharing the cores slow both samplers",
}


def forward_flops(config: PixelCNNppConfig) -> int:
    """FLOPs (2 x multiply-adds, non-padding taps, convs only) of one forward pass for one image."""
    plan = build_plan(config)
    total = 0
    for node in plan.nodes:
        for term in node.terms:
            if term.module is None:
                continue  # a shift copies, it does not multiply
            sources = [plan.nodes[s] for s in term.sources]
            zero_slot = sources[0].size[0] * sources[0].size[1]
            in_channels = sum(s.channels for s in sources) * (2 if term.activation == "concat_elu" else 1)
            taps = int((term.table != zero_slot).sum())
            total += 2 * taps * in_channels * term.channels
    return total


def cache_bytes_per_image(config: PixelCNNppConfig, element_bytes: int = 4) -> int:
    """Memory of the cached sampler's activation caches per image in the batch (float32 by default)."""
    shapes = [shape for pair in cache_shapes(build_plan(config)) for shape in pair if shape is not None]
    return element_bytes * sum(rows * channels for rows, channels in shapes)


def project_sampling_hours(seconds_per_image: float, n_images: int = PROJECTION_IMAGES) -> float:
    """Hours to sample ``n_images`` at a measured cost per image (one process on this machine)."""
    if seconds_per_image <= 0 or n_images < 1:
        raise ValueError(f"need positive seconds_per_image and n_images, got {seconds_per_image}, {n_images}")
    return seconds_per_image * n_images / 3600.0


def project_gpu_hours(
    config: PixelCNNppConfig,
    *,
    sustained_tflops: float,
    n_images: int = PROJECTION_IMAGES,
    batch_size: int = 128,
    step_overhead_seconds: float = 0.0,
) -> float:
    """FLOP-based projection of cached sampling time on an accelerator, in hours.

    Arithmetic is one forward pass per image (``forward_flops``) at ``sustained_tflops``; each
    batch also pays ``step_overhead_seconds`` per pixel step (kernel launches, pixel draws), which
    is what limits small batches. Both figures are assumptions to state beside the result.
    """
    if sustained_tflops <= 0 or n_images < 1 or batch_size < 1 or step_overhead_seconds < 0:
        raise ValueError("need positive sustained_tflops, n_images, batch_size and non-negative overhead")
    compute = forward_flops(config) * n_images / (sustained_tflops * 1e12)
    overhead = -(-n_images // batch_size) * config.image_size**2 * step_overhead_seconds
    return (compute + overhead) / 3600.0


def _seeded_model(config: PixelCNNppConfig, seed: int) -> PixelCNNpp:
    with torch.random.fork_rng():  # weight init draws from the global generator; keep it untouched
        torch.manual_seed(seed)
        return PixelCNNpp(config)


def _time_naive(model: PixelCNNpp, batch_size: int, steps: int) -> float:
    """Mean seconds of one full forward pass at ``batch_size`` (one naive sampling step)."""
    cfg = model.config
    canvas = torch.zeros(batch_size, cfg.in_channels, cfg.image_size, cfg.image_size, device=model.device)
    with eval_no_grad(model):
        model(canvas)  # warm-up: allocator and oneDNN primitive caches
        start = time.perf_counter()
        for _ in range(steps):
            model(canvas)
        return (time.perf_counter() - start) / steps


def bench_sampler(
    config: PixelCNNppConfig,
    batch_sizes: list[int],
    *,
    naive_steps: int = 2,
    cached_images: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per second of the naive and the cached sampler at each batch size, as a JSON-able dict.

    ``cached_images`` defaults to one full batch per batch size; ``naive_steps=0`` skips the naive
    timing (for configs whose naive forward pass is too slow to bother).
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be a non-empty list of positive ints, got {batch_sizes}")
    if naive_steps < 0 or (cached_images is not None and cached_images < 1):
        raise ValueError(f"need naive_steps >= 0 and cached_images >= 1, got {naive_steps}, {cached_images}")
    model = _seeded_model(config, seed)
    pixels = config.image_size**2
    start = time.perf_counter()
    build_plan(config, model.device)
    plan_seconds = time.perf_counter() - start

    rows = []
    for batch in batch_sizes:
        row: dict[str, Any] = {"batch_size": batch, "load_average_1m": os.getloadavg()[0]}
        if naive_steps:
            forward = _time_naive(model, batch, naive_steps)
            naive_per_image = forward * pixels / batch
            row.update(naive_forward_seconds=forward, naive_images_per_second=1.0 / naive_per_image)
        count = cached_images or batch
        start = time.perf_counter()
        sample_pixelcnnpp(model, count, seed=seed, batch_size=batch, sampler="cached")
        cached = time.perf_counter() - start
        cached_per_image = cached / count
        row.update(
            cached_images=count,
            cached_seconds=cached,
            cached_images_per_second=1.0 / cached_per_image,
            cached_ms_per_step=1000.0 * cached / (pixels * -(-count // batch)),
            projected_hours_150k_cached=project_sampling_hours(cached_per_image),
        )
        if naive_steps:
            row["speedup"] = naive_per_image / cached_per_image
        rows.append(row)

    return {
        "benchmark": "pixelcnnpp_sampler",
        "method": METHOD,
        "config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_gflops_per_image": forward_flops(config) / 1e9,
        "cache_mb_per_image": cache_bytes_per_image(config) / 1e6,
        "plan_build_seconds": plan_seconds,
        "naive_steps": naive_steps,
        "seed": seed,
        "machine": machine_info(),
        "results": rows,
    }
