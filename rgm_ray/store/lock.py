"""One writer per output: an exclusive lock on an output directory for a command's whole life.

Without it two commands into the same directory interleave: both draw every shard, one refuses
with a false reason, or an ``--overwrite`` swaps a directory away under a run still writing it.

The lock is ``fcntl.flock`` on a hidden sibling file, ``.<name>.lock`` beside the output (the output
itself may not exist yet, and is swapped whole by ``atomic.replace_directory``, which a sibling
survives). The kernel drops a flock when its holder exits, however it dies, so a lock is never left
held by a dead process; the file's JSON body (PID, host, start, command) only names the holder in the
refusal. A body found under a free lock is a holder that died before removing the file: it is taken
over, and a warning says so. The holder removes the file on release; a locker that opened it just
before then finds its file unlinked (or replaced) and locks the new one instead.

Limits: on network filesystems flock may be advisory per client only (NFS emulates it with POSIX
locks, which work between clients; some filesystems do not), so two hosts are only kept apart where
the filesystem supports it; a filesystem refusing locks gets a warning and no protection. A second
lock of the same output in the same thread (a command calling a stage on its own output) is
re-entrant; another thread of the same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class OutputLockedError(RuntimeError):
    """Another command is writing the output (the CLI prints the message and exits with code 2)."""


@dataclass(frozen=True)
class Held:
    """A held lock: its file, the record written into it, and the dead holder's record it replaced."""

    path: Path
    record: dict[str, Any]
    took_over: dict[str, Any] | None = None


_held: dict[Path, tuple[int, Held]] = {}  # lock file -> (owning thread, lock), for re-entry
_guard = threading.Lock()


def lock_path(out: str | Path) -> Path:
    """The lock file of the output ``out``: ``.<name>.lock`` in its (resolved) parent directory."""
    target = Path(out).expanduser().resolve()
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(out: str | Path, *, command: str | None = None) -> Iterator[Held]:
    """Hold ``out``'s lock for the block; refuse at once with :class:`OutputLockedError` if another holds it.

    ``command`` (default: this process's command line) is recorded to name the holder to others.
    """
    path = lock_path(out)
    with _guard:
        owner, held = _held.get(path, (None, None))
    if held is not None and owner == threading.get_ident():
        yield held
        return
    fd, held = _acquire(path, out, command or shlex.join(sys.argv))
    with _guard:
        _held[path] = (threading.get_ident(), held)
    try:
        yield held
    finally:
        with _guard:
            del _held[path]
        _release(path, fd)


def _acquire(path: Path, out: str | Path, command: str) -> tuple[int, Held]:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise OutputLockedError(_refusal(out, holder)) from None
        except OSError as exc:
            if exc.errno not in UNSUPPORTED:
                os.close(fd)
                raise
            log.warning("%s: this filesystem does not support locks (%s); another command writing %s at the "
                        "same time would not be stopped", path, exc.strerror, out)
        if _is_current(fd, path):
            break
        os.close(fd)  # the holder removed this file as we opened it: lock the one now there
    previous = _read(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    body = (json.dumps(record, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, body, 0)
    if previous is not None:
        log.warning("%s: took over the lock left by %s (its lock was free: that process is gone)", out,
                    _holder(previous))
    return fd, Held(path, record, previous)


def _release(path: Path, fd: int) -> None:
    """Empty and remove the lock file while still holding it (a locker that opened it re-checks), then
    unlock. Never raises: it runs while a stage's own error may be propagating."""
    try:
        os.ftruncate(fd, 0)  # should the unlink fail, the next locker finds no dead holder to report
        if _is_current(fd, path):
            path.unlink()
    except OSError as exc:
        log.warning("%s: could not remove the lock file (%s)", path, exc.strerror)
    finally:
        os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """``fd`` is still the file at ``path`` (not unlinked or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict[str, Any] | None:
    """The holder record in the lock file, or None when it is empty or not (yet) a whole record."""
    data = os.pread(fd, 1 << 16, 0)
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _holder(record: dict[str, Any]) -> str:
    return (f"PID {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('started', '?')} "
            f"({record.get('command', '?')})")


def _refusal(out: str | Path, holder: dict[str, Any] | None) -> str:
    who = _holder(holder) if holder else "another command (it is starting up)"
    return f"{out} is being written by {who}; wait for it to finish or stop it"
