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
import secrets
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import torch

VERBOSE_ENV = "RGM_RAY_VERBOSE"  # set (not 0): Ray, Ray Data and Tune print to the console as they do by default
QUIET_RAY_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # read when ray.data is imported; quiet_ray_data covers an earlier import
    "RAY_verbose_spill_logs": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's new console output prints its set-up table and hints even at verbose=0
}
AUTH_TOKEN_FILE = "auth_token"  # in ~/.ray, where a local ray.init with token auth writes it
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    verbose = ray_verbose()
    for key, value in ({} if verbose else QUIET_RAY_ENV).items():
        os.environ.setdefault(key, value)
    # Ray's banners and info logs, and the workers' output echoed by the driver, off unless asked for
    kwargs: dict = {} if verbose else {"logging_level": logging.WARNING, "log_to_driver": False}
    # ... and Ray's warning, every time, that a local cluster has token auth on (its default for a new one)
    with logger_level(TOKEN_NOTICE_LOGGER, None if verbose else logging.ERROR), _keep_sigterm_handler():
        if address is None and not os.environ.get("RAY_ADDRESS"):
            with _loopback_only(), _private_auth_token():
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep a SIGTERM handler the caller installed across ``ray.init``, which replaces it by its own
    ``sys.exit``: a command's "SIGTERM interrupts like Ctrl-C" (``tracking.start_run``) stays true."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):  # a Python handler; Ray's own stays in place of the default
            signal.signal(signal.SIGTERM, previous)


def ray_verbose() -> bool:
    """``$RGM_RAY_VERBOSE`` is set to something other than ``0``: leave Ray's own console output as Ray has it.

    By default commands keep it off (their own progress lines say what is happening): Ray's info logs
    and start-up notices, the workers' output echoed by the driver, Ray Data's progress bars and
    per-dataset banners, Tune's status tables. Warnings and errors still show, and Ray's log files
    (``/tmp/ray/session_latest/logs``) keep everything either way.
    """
    return os.environ.get(VERBOSE_ENV, "0").strip() not in ("", "0")


def quiet_ray_data() -> None:
    """Ray Data's console output off in this driver (see :func:`ray_verbose`), before it runs a dataset.

    The bars go (callers count the rows on their own), and so do the info lines every dataset logs
    (its start, execution plan and end) and the notice that bars are off; Ray Data's warnings still
    reach the console and its ``ray-data.log`` in the session's log folder keeps everything.
    """
    if ray_verbose():
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; the session log file is another kind
            handler.setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled ..."


@contextlib.contextmanager
def logger_level(name: str, level: int | None) -> Iterator[None]:
    """Logger ``name`` at ``level`` (None: as it is) in the block, then back at its own level."""
    logger = logging.getLogger(name)
    saved = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


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
    """Keep the token a local ``ray.init`` uses (``~/.ray/auth_token``) from other users and other starts.

    Ray writes a missing token with the process umask (0644: world-readable; the token lets anyone who
    can reach the cluster run code on it) and not atomically, and every Ray process re-reads the file
    as it starts: two local Rays starting at once could each overwrite the other's token, and one
    cluster's workers then fail with ``InvalidAuthToken``. So a missing token is created here, 0600
    from its first byte and published with ``os.link`` (which never replaces an existing file, so
    every concurrent start ends up with the same token); Ray finds it and writes nothing.
    """
    from ray._raylet import AuthenticationTokenLoader

    token = Path.home() / ".ray" / AUTH_TOKEN_FILE
    token.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    uses_default_file = (os.environ.get("RAY_AUTH_MODE", "token").lower() == "token"
                         and not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & os.environ.keys())
    if uses_default_file and not token.exists():
        _publish_token(token)
        AuthenticationTokenLoader.instance().reset_cache()  # it may have cached "no token"
    try:
        yield
    finally:  # a token written by an older Ray or by hand keeps working, but no longer world-readable
        if token.is_file() and token.stat().st_uid == os.geteuid() and token.stat().st_mode & 0o077:
            token.chmod(0o600)


def _publish_token(token: Path) -> None:
    """Write a new random token to ``token`` (0600) unless another process publishes one first."""
    fd, tmp = tempfile.mkstemp(dir=token.parent, prefix=f".{token.name}.")  # mkstemp files are 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, token)
    finally:
        os.unlink(tmp)


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
