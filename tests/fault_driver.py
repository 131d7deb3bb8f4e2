"""Fault injection for the issue-19 fault tests: a stage driver that SIGKILLs itself at a counted point.

``python tests/fault_driver.py JOB.json`` runs one job (a stage's Python entry point, or ``rgm
pipeline``) and kills itself with SIGKILL where ``JOB["kill"]`` says. Points are counts, never times:

* ``{"rename": "shard-*.parquet", "at": 2}``: just before the 2nd atomic rename (``store.atomic``)
  onto a name matching the pattern: that file is written under its temporary name, not yet published;
* ``{"bar": "score", "at": 1}``: at the 1st update of a progress bar whose description starts with
  "score" (a stage's ``progress`` hook: mid-computation, e.g. while Ray Data scores).

A test takes the counts from an undisturbed run (:func:`recording_renames`), so each point is hit
exactly. The undisturbed and the resumed runs call the same :func:`run_job` in the test process, so
all runs see the same arguments and write the same provenance. Not collected by pytest (no ``test_``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

COMMAND = "rgm fault-test"  # the provenance every run of a job records
HERE = Path(__file__).resolve().parent
VOLATILE_KEYS = ("created", "completed", "started")  # timestamps; and any key naming seconds or a rate
RAY_AGENTS = ("ray::DashboardA", "ray::RuntimeEnv")  # a local Ray's agents (/proc names are cut at 15 characters)


# --- the job ---------------------------------------------------------------------------------------------


def run_job(job: dict[str, Any], progress: Callable[..., Any] | None = None) -> Any:
    """Run ``job``'s stage through its Python entry point (the pipeline through ``rgm pipeline``)."""
    from rgm_ray.runtime import ClusterOptions

    cluster = ClusterOptions(**job.get("cluster", {}))
    spec = job.get("spec", {})
    if job["stage"] == "generate":
        from rgm_ray.generate import GenerateSpec, generate_sample_set

        return generate_sample_set(GenerateSpec(**spec), cluster, command=COMMAND, progress=progress)
    if job["stage"] == "weigh":
        from rgm_ray.weigh import ScoringOptions, WeighConfig, WeighSpec, weigh

        spec = {**spec, "config": WeighConfig.from_dict(spec.get("config", {})),
                "scoring": ScoringOptions(**spec.get("scoring", {}))}
        return weigh(WeighSpec(**spec), cluster, command=COMMAND, progress=progress)
    if job["stage"] == "resample":
        from rgm_ray.resample import ResampleConfig, ResampleSpec, resample_sample_set

        spec = {**spec, "config": ResampleConfig(**spec["config"])}
        return resample_sample_set(ResampleSpec(**spec), cluster, command=COMMAND, progress=progress)
    if job["stage"] == "pipeline":
        from rgm_ray.cli.main import main

        saved, sys.argv = sys.argv, [COMMAND, *job["argv"]]  # stages record sys.argv as their command
        try:
            assert main(job["argv"]) == 0
        finally:
            sys.argv = saved
        return None
    raise ValueError(f"unknown stage {job['stage']!r}")


# --- counting and killing ----------------------------------------------------------------------------------


@contextlib.contextmanager
def on_renames(hook: Callable[[str], None]) -> Iterator[None]:
    """Call ``hook(name)`` before every atomic rename of ``store.atomic`` (files and directories alike)."""
    from rgm_ray.store import atomic

    real = atomic.os
    proxy = types.ModuleType("os")
    proxy.__dict__.update(real.__dict__)

    def replace(src, dst, *args, **kwargs):
        hook(Path(dst).name)
        return real.replace(src, dst, *args, **kwargs)

    proxy.replace = replace
    atomic.os = proxy
    try:
        yield
    finally:
        atomic.os = real


@contextlib.contextmanager
def recording_renames() -> Iterator[list[str]]:
    """The names atomically published in the block, in order."""
    names: list[str] = []
    with on_renames(names.append):
        yield names


def count(names: list[str], pattern: str) -> int:
    return sum(fnmatch.fnmatch(name, pattern) for name in names)


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_before_rename(pattern: str, at: int) -> Callable[[str], None]:
    seen = [0]

    def hook(name: str) -> None:
        if fnmatch.fnmatch(name, pattern):
            seen[0] += 1
            if seen[0] == at:
                _die()
    return hook


def _killing_bars(prefix: str, at: int) -> Callable[..., Any]:
    """A progress-bar factory (the stages' ``progress`` hook): the ``at``-th update of its bars whose
    description starts with ``prefix`` (counted over all of them) kills the process."""
    updates = [0]

    class Bar:
        def __init__(self, *, desc: str = "", **_: Any) -> None:
            self.armed = desc.startswith(prefix)

        def update(self, n: int = 1) -> None:
            if self.armed:
                updates[0] += 1
                if updates[0] == at:
                    _die()

        def close(self) -> None:
            pass

    return Bar


def main(job_path: str) -> None:
    import torch

    torch.set_num_threads(1)  # as in the test process (conftest.py), where the other runs of a job run
    job = json.loads(Path(job_path).read_text())
    kill = job["kill"]
    if "bar" in kill:
        run_job(job, progress=_killing_bars(kill["bar"], kill["at"]))
    else:
        with on_renames(_kill_before_rename(kill["rename"], kill["at"])):
            run_job(job)
    raise SystemExit(f"the kill point {kill} was never reached")


# --- the test side ------------------------------------------------------------------------------------------


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, name) of the live processes of session ``sid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            found.append((int(entry.name), stat[stat.index("(") + 1:stat.rindex(")")]))
    return found


def end_session(sid: int) -> None:
    """SIGKILL what is left of the session a test started (``start_new_session``): its processes only."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``condition`` until it is true (a bounded wait on a condition, not a sleep for time to pass)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return value


def with_tests_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this directory on ``PYTHONPATH`` (the gated plugin lives here)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def start_driver(job: dict[str, Any], kill: dict[str, Any], workdir: Path) -> subprocess.Popen:
    """Start ``job`` in a subprocess, in a session of its own, that SIGKILLs itself at ``kill``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({**job, "kill": kill}))
    return subprocess.Popen([sys.executable, str(HERE / "fault_driver.py"), str(path)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=with_tests_on_path())


def run_killed(job: dict[str, Any], kill: dict[str, Any], workdir: Path, *, timeout: float = 120,
               ray_exit_timeout: float | None = None) -> float | None:
    """Run ``job`` in a subprocess that SIGKILLs itself at ``kill``, then end what is left of its session.

    With ``ray_exit_timeout`` (for a driver that started its own local Ray) it first waits, that long at
    most, for everything but the local Ray's agents (GCS, raylet, workers) to exit by itself, and returns
    how long that took; the agents outlive a killed driver by about a minute and hold nothing.
    """
    proc = start_driver(job, kill, workdir)
    try:
        _, err = proc.communicate(timeout=timeout)
        assert proc.returncode == -signal.SIGKILL, f"driver exited with {proc.returncode}, not SIGKILL: {err[-3000:]}"
        if ray_exit_timeout is None:
            return None
        died = time.monotonic()
        wait_until(lambda: all(name.startswith(RAY_AGENTS) for _, name in session_processes(proc.pid)),
                   ray_exit_timeout, "the dead driver's GCS, raylet and workers to exit")
        return time.monotonic() - died
    finally:
        end_session(proc.pid)


def _stable(value: Any, names: dict[str, str]) -> Any:
    """``value`` without timestamps and timings, each digest of a file in ``names`` replaced by that name."""
    if isinstance(value, dict):
        return {k: _stable(v, names) for k, v in value.items()
                if k not in VOLATILE_KEYS and "seconds" not in k and "per_sec" not in k}
    if isinstance(value, list):
        return [_stable(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def fingerprint(root: str | Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every published file under ``root`` but those under the relative paths ``skip``: its SHA-256, or for
    a JSON file its content without timestamps and timings.

    Hidden names (temporary files a killed run left, lock files) are not part of an output. A digest
    of a file under ``root`` in a JSON file (``_complete.json``'s artefacts, the input manifests an
    evaluation records) is compared as the name of that file: manifests hold timestamps, so their
    digests differ between any two runs, and the file itself is compared on its own.
    """
    root = Path(root)
    files = [path for path in sorted(root.rglob("*"))
             if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
             and not any(str(path.relative_to(root)).startswith(prefix) for prefix in skip)]
    digests = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    names = {digest: f"sha256 of {path.relative_to(root)}" for path, digest in digests.items()}
    return {str(path.relative_to(root)): json.dumps(_stable(json.loads(path.read_text()), names), sort_keys=True)
            if path.suffix == ".json" else digests[path] for path in files}


def hidden_leftovers(root: str | Path) -> list[str]:
    """Hidden entries (temporaries of killed runs) under ``root``."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


# --- small input sets --------------------------------------------------------------------------------------


def write_weigh_inputs(root: Path, images: Any) -> Path:
    """``root/real`` (the first 256 ``images``) and ``root/gen`` (the next 256, darkened), 4 shards each."""
    import numpy as np

    from rgm_ray.store import SampleSetWriter, make_table

    for name, part in (("real", images[:256]), ("gen", images[256:512] // 2)):
        with SampleSetWriter(root / name, source=f"test:{name}") as writer:
            for s in range(4):
                writer.write(make_table(np.arange(64 * s, 64 * (s + 1)), part[64 * s:64 * (s + 1)], None,
                                        source=f"test:{name}"))
    return root


def write_weighted_set(path: Path, *, shards: int, side: int, seed: int) -> Path:
    """A weighted set of ``shards`` x 100 random ``side`` x ``side`` images with normal log-weights."""
    import numpy as np

    from rgm_ray.store import SampleSetWriter, make_table

    rng = np.random.default_rng(seed)
    with SampleSetWriter(path, source="test:weighted") as writer:
        for s in range(shards):
            writer.write(make_table(np.arange(100 * s, 100 * (s + 1)),
                                    rng.integers(0, 256, (100, 1, side, side), np.uint8), None, source="test:weighted",
                                    extra={"log_weight": rng.normal(size=100).astype(np.float32)}))
    return path


# --- a plugin for interruption tests --------------------------------------------------------------------------


class GatedGenerator:
    """The example plugin, except that in a worker every shard after the first waits for ``gate`` to exist.

    An interruption test removes the gate, sees shard 0 written and interrupts the run while shard 1
    waits; the resumed and the undisturbed runs have the gate. The images never depend on the gate.
    """

    def __init__(self, gate: str, size: int = 16) -> None:
        from rgm_ray.generate.example_plugin import TinyDeconvGenerator

        self.inner = TinyDeconvGenerator(size=size)
        self.shape = self.inner.shape
        self.gate = Path(gate)
        self.shards = 0

    def sample(self, n: int, seed: int):
        if n > 2:  # the driver's probe draws 2 images; shards are larger
            if self.shards:
                while not self.gate.exists():
                    time.sleep(0.05)
            self.shards += 1
        return self.inner.sample(n, seed)


if __name__ == "__main__":
    main(sys.argv[1])
