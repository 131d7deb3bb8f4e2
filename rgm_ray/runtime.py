"""Device and cluster set-up in one place; everything else asks this module.

GPUs are a configuration switch, never a requirement: with no CUDA device every stage runs on the
CPU. Ray is started locally when no cluster address is given (inside ``ray job submit`` the
``RAY_ADDRESS`` variable makes ``ray.init()`` join the job's cluster instead).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # we draw our own bars
    "RAY_verbose_spill_logs": "0",
}


def autodetect_device(prefer: str | None = None) -> "torch.device":
    """``prefer`` ("cpu", "cuda", "cuda:1") if given, else CUDA when available, else CPU."""
    import torch

    if prefer:
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} requested but CUDA is not available on this machine")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_torch_threads(num_threads: int | None) -> None:
    """Pin intra-op threads (one per Ray worker CPU keeps workers from oversubscribing cores)."""
    if num_threads is not None and num_threads > 0:
        import torch

        torch.set_num_threads(num_threads)


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Connect to ``address`` ("auto", "ray://host:10001") or start a local Ray; idempotent."""
    import ray

    if ray.is_initialized():
        return
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    ray.init(address=address, **kwargs)
