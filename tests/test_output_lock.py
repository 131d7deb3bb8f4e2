"""One writer per output (issue 19.7) and a local Ray that listens on loopback only (issue 19.8).

The competing writer is a real second process holding ``output_lock`` until the test closes its
stdin, so nothing waits on time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rgm_ray.cli.main import main
from rgm_ray.store.atomic import replace_directory
from rgm_ray.store.lock import OutputLockedError, lock_path, output_lock

HOLDER = """
import sys
from rgm_ray.store.lock import output_lock
with output_lock(sys.argv[1], command="test-holder"):
    print("locked", flush=True)
    sys.stdin.read()
"""
PLUGIN = "rgm_ray.generate.example_plugin:make"


@contextlib.contextmanager
def holder(out: Path):
    """A second process holding ``out``'s lock until the block ends (or the test kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parents[1])
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()


def test_second_locker_is_refused_with_the_holder_named(tmp_path):
    out = tmp_path / "runs" / "x"
    with holder(out) as proc:
        record = json.loads(lock_path(out).read_text())
        with pytest.raises(OutputLockedError) as refused:
            with output_lock(out):
                pass
    message = str(refused.value)
    assert message.startswith(f"{out} is being written by PID {proc.pid} on host {socket.gethostname()} "
                              f"since {record['started']} (test-holder)")
    assert proc.returncode == 0
    with output_lock(out) as held:  # released when the holder finished
        assert held.took_over is None and held.record["pid"] == os.getpid()
    assert not lock_path(out).exists() and not out.exists()


def test_a_killed_holders_lock_is_taken_over(tmp_path, caplog):
    out = tmp_path / "x"
    with holder(out) as proc:
        proc.kill()
        proc.wait(timeout=60)
        assert json.loads(lock_path(out).read_text())["pid"] == proc.pid  # left behind by the dead holder
        with caplog.at_level(logging.WARNING, logger="rgm_ray.store.lock"), output_lock(out) as held:
            assert held.took_over["pid"] == proc.pid
    assert f"took over the lock left by PID {proc.pid}" in caplog.text
    assert not lock_path(out).exists()


def test_same_thread_reenters_other_threads_are_refused_and_the_lock_survives_a_swap(tmp_path):
    out, new = tmp_path / "x", tmp_path / "new"
    out.mkdir()
    new.mkdir()
    (new / "data").write_text("new")
    refusals: list[Exception] = []

    def other_thread() -> None:
        try:
            with output_lock(out):
                pass
        except OutputLockedError as exc:
            refusals.append(exc)

    with output_lock(out) as outer:
        with output_lock(out) as inner:
            assert inner is outer
        replace_directory(new, out)  # what --overwrite does to the output
        assert lock_path(out).exists()
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(refusals) == 1 and f"PID {os.getpid()}" in str(refusals[0])
    assert (out / "data").read_text() == "new" and not lock_path(out).exists()


def _import_source(tmp_path: Path) -> str:
    source = tmp_path / "images.npy"
    np.save(source, np.zeros((4, 1, 8, 8), dtype=np.uint8))
    return str(source)


COMMANDS = {
    "generate": lambda out, tmp: ["generate", "--generator", PLUGIN, "--num-samples", "8", "--out", out],
    "generate --overwrite": lambda out, tmp: ["generate", "--generator", PLUGIN, "--num-samples", "8", "--out", out,
                                              "--overwrite"],
    "train": lambda out, tmp: ["train", "vae", "--out", out, "--overwrite"],
    "data import": lambda out, tmp: ["data", "import", _import_source(tmp), "--out", out, "--overwrite"],
    "evaluate": lambda out, tmp: ["evaluate", "--real", "fashion-mnist", "--set", f"a={tmp / 'inputs'}", "--k", "10",
                                  "--out", out],
    "demo": lambda out, tmp: ["demo", "--out", out],
}


@pytest.fixture(scope="module")
def busy_out(tmp_path_factory):
    """An output another process is writing (one holder for all the commands below)."""
    out = tmp_path_factory.mktemp("busy") / "out"
    out.mkdir()
    (out / "partial").write_text("the other run's work")
    with holder(out) as proc:
        yield out, proc


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_into_an_output_being_written_is_refused_at_once(busy_out, tmp_path, capsys, command):
    out, proc = busy_out
    assert main([*COMMANDS[command](str(out), tmp_path), "--no-mlflow"]) == 2
    assert f"is being written by PID {proc.pid}" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["partial"]  # nothing written, nothing replaced
    assert {p.name for p in out.parent.iterdir()} == {"out", lock_path(out).name}  # no staging sibling either


# --- defect 8: the embedded local Ray --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """The local Ray ``init_ray`` starts. ``~`` stays the real one: Ray caches the token it loaded in the
    process, so a ``HOME`` changed after an earlier module's Ray would leave the new GCS without one."""
    import ray

    from rgm_ray.runtime import init_ray

    init_ray(num_cpus=2)
    try:
        yield ray, Path.home()
    finally:
        ray.shutdown()


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only_and_its_token_is_private(local_ray):
    ray, home = local_ray
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    ray.get([ray.remote(lambda: os.getpid()).remote() for _ in range(2)])  # workers listen too
    me = psutil.Process()
    listening = {}
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    listening[(conn.laddr.ip, conn.laddr.port)] = process.name()
    assert len(listening) >= 4  # GCS, raylet, dashboard agent, workers
    exposed = {address: name for address, name in listening.items() if not _loopback(address[0])}
    assert not exposed
    token = home / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE") == "token":  # Ray turned token auth on (its default since 2.59)
        assert token.is_file()
    assert not token.exists() or token.stat().st_mode & 0o777 == 0o600  # ours: init_ray keeps it private


def test_auth_token_is_published_private_and_never_replaced(tmp_path):
    """Two local starts at once must agree on one token (Ray re-reads the file in every process it
    starts): the first published token stays, and it is 0600 from the start."""
    from rgm_ray.runtime import _publish_token

    token = tmp_path / "auth_token"
    _publish_token(token)
    first = token.read_text()
    assert len(first) == 64 and int(first, 16) >= 0 and token.stat().st_mode & 0o777 == 0o600
    _publish_token(token)  # a concurrent start that lost the race
    assert token.read_text() == first and [p.name for p in tmp_path.iterdir()] == ["auth_token"]
