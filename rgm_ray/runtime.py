"""Device and cluster set-up in one place; everything else asks this module.

GPUs are a configuration switch, never a requirement: with no CUDA device every stage runs on the
CPU. Ray is started locally when no cluster address is given (inside ``ray job submit`` the
``RAY_ADDRESS`` variable makes ``ray.init()`` join the job's cluster instead).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import torch

QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # we draw our own bars
    "RAY_verbose_spill_logs": "0",
}
AUTH_TOKEN_FILE = "auth_token"  # in ~/.ray, where a local ray.init with token auth writes it


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
    """Connect to ``address`` ("auto", "ray://host:10001") or start a local Ray; idempotent.

    A local Ray is a new single-machine instance (never a ``ray start`` cluster found on the machine:
    pass ``address="auto"`` for that) that listens on the loopback interface only, and its
    ``~/.ray/auth_token`` is readable by the user alone. README "Network exposure" says how to open
    a cluster up.
    """
    import ray

    if ray.is_initialized():
        return
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        with _loopback_only(), _private_auth_token():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
    else:
        ray.init(address=address, **kwargs)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the Ray started in the block listen on 127.0.0.1 only.

    On Linux ``ray.init`` replaces a loopback node IP (even an explicit ``_node_ip_address="127.0.0.1"``)
    by the machine's outward address, and then every server (GCS, raylet, workers, the dashboard
    agent and its metrics port) listens on all interfaces. Ray binds to loopback where it takes
    multi-node clusters to be unsupported (``ray_constants.ENABLE_RAY_CLUSTER`` off, as on macOS and
    Windows), which is what a single-machine Ray is; the flag is read only while the node starts.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _private_auth_token() -> Iterator[None]:
    """Keep the token a local ``ray.init`` writes to ``~/.ray/auth_token`` from other users.

    Ray writes it with the process umask (0644: world-readable), and the token lets anyone who can
    reach the cluster run code on it. A new ``~/.ray`` is made 0700 before Ray writes there, and
    the token (ours, whenever it was written) is made 0600 after.
    """
    token = Path.home() / ".ray" / AUTH_TOKEN_FILE
    if not token.parent.exists():
        token.parent.mkdir(mode=0o700, parents=True)
    try:
        yield
    finally:  # also when the start fails after Ray wrote the token
        if token.is_file() and token.stat().st_uid == os.geteuid() and token.stat().st_mode & 0o077:
            token.chmod(0o600)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a stage runs on Ray; none of this changes any result.

    ``workers=None`` fills the cluster. ``cpus_per_worker`` may be fractional (Ray Data scorers take
    0.5 so the read tasks keep a CPU), and ``gpus_per_worker > 0`` puts every worker on a GPU.
    """

    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str | None = None  # None: local Ray (or $RAY_ADDRESS inside a Ray job)

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers <= 0):
            raise ValueError(f"workers must be a positive int, got {self.workers!r}")
        if not self.cpus_per_worker > 0 or not self.gpus_per_worker >= 0:
            raise ValueError(f"cpus_per_worker must be > 0 and gpus_per_worker >= 0, got {self}")

    @property
    def device(self) -> str:
        """The torch device of a worker."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    @property
    def threads(self) -> int:
        """Torch intra-op threads of a worker: one per whole CPU it holds."""
        return max(1, int(self.cpus_per_worker))


def worker_count(cluster: ClusterOptions, resources: Mapping[str, float], *, pending: int | None = None,
                 reserve_cpu: bool = False, node_cpus: Sequence[float] = ()) -> int:
    """How many workers of ``cluster``'s size to start on a cluster with ``resources``.

    ``resources`` is ``ray.cluster_resources()``. ``reserve_cpu`` keeps one CPU (half of a one-CPU
    cluster) free for Ray Data's read tasks: an actor pool holding every CPU hangs without a message
    (ray issue 44687), so such a pool is refused. On several nodes (``node_cpus``: each live node's
    CPUs) that CPU must be whole on one node, and Ray places actors where it likes (it spreads them): the
    pool is kept smaller than the number of actors that could leave every node short of a whole CPU.
    ``pending`` caps the count at the work available.
    """
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    budget = cpus - min(1.0, cpus / 2) if reserve_cpu else cpus
    fits = math.floor(budget / cluster.cpus_per_worker + 1e-9)
    if reserve_cpu and len(node_cpus) > 1:
        fits = min(fits, sum(_actors_to_take_a_whole_cpu(c, cluster.cpus_per_worker) for c in node_cpus) - 1)
    if cluster.gpus_per_worker > 0:
        if gpus < cluster.gpus_per_worker:
            raise ValueError(f"--gpus-per-worker {cluster.gpus_per_worker:g} but the cluster has {gpus:g} GPU(s)")
        fits = min(fits, math.floor(gpus / cluster.gpus_per_worker + 1e-9))
    workers = cluster.workers or max(fits, 1)
    if reserve_cpu and workers > fits:
        raise ValueError(
            f"{workers} worker(s) x {cluster.cpus_per_worker:g} CPU"
            + (f" x {cluster.gpus_per_worker:g} GPU" if cluster.gpus_per_worker else "")
            + f" do not fit in {cpus:g} CPU(s) / {gpus:g} GPU(s) while leaving {cpus - budget:g} CPU for Ray Data's "
            + (f"read tasks, whole on one of the {len(node_cpus)} nodes " if len(node_cpus) > 1 else "read tasks ")
            + "(an actor pool holding every CPU hangs); use fewer --workers or a smaller --cpus-per-worker")
    return workers if pending is None or cluster.workers else max(1, min(workers, pending))


def _actors_to_take_a_whole_cpu(node_cpus: float, cpus_per_actor: float) -> int:
    """The fewest actors that leave a node of ``node_cpus`` CPUs without a whole free CPU (0: it has none)."""
    return math.floor((node_cpus - 1) / cpus_per_actor + 1e-9) + 1 if node_cpus >= 1 else 0
