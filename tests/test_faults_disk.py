"""Issue 19, full disk and read-only targets: writing into a full filesystem or a read-only directory fails with
one line naming the path (and, on a full disk, the space left); no finished-looking output is left; the next
run with space completes, to the bytes of an undisturbed run.

A real size-limited filesystem (a tmpfs mounted for the test) where the machine allows it; everywhere a
full disk simulated at the Parquet writer, raising what pyarrow raises on ENOSPC (errno 28, no file name).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fault_driver as fd
from rgm_ray.cli.main import main
from rgm_ray.store import MANIFEST_NAME, verify_sample_set
from rgm_ray.weigh import is_complete as weigh_complete

pytestmark = [pytest.mark.ray, pytest.mark.faults]

GENERATE = ["generate", "--generator", "rgm_ray.generate.example_plugin:make", "--generator-arg", "size=32",
            "--num-samples", "640", "--shard-size", "64", "--seed", "1", "--workers", "1", "--no-mlflow"]
PYARROW_ENOSPC = "Error writing bytes to file. Detail: [errno 28] No space left on device"


def _error_line(capsys, command: str) -> str:
    """The one line the CLI printed for a failure (progress bars and Ray's own logging aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"rgm {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def _mount(*options: str, target: Path) -> None:
    done = subprocess.run(["mount", *options, target], capture_output=True, text=True)
    if done.returncode:
        raise OSError(done.stderr.strip() or f"mount {' '.join(options)} failed")


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of a given size (``small_fs(kib)``), remountable; skips where this machine cannot mount one."""
    target = tmp_path / "small"
    target.mkdir()
    mounted = []

    def mount(kib: int, *extra: str) -> Path:
        first = not mounted
        options = ["-o", ",".join([*([] if first else ["remount"]), f"size={kib}k", *extra])]
        try:
            _mount(*(["-t", "tmpfs", *options, "tmpfs"] if first else options), target=target)
        except OSError as exc:
            if not first:
                raise
            pytest.skip(f"cannot mount a size-limited tmpfs on this machine (needs root): {exc}")
        mounted.append(True)
        return target

    yield mount
    if mounted:
        subprocess.run(["umount", target], check=True)


def test_generate_into_a_full_then_read_only_filesystem(ray_local, tmp_path, small_fs, capsys):
    assert main([*GENERATE, "--out", str(tmp_path / "reference")]) == 0
    reference = fd.fingerprint(tmp_path / "reference")
    size_kib = sum(p.stat().st_size for p in (tmp_path / "reference").iterdir()) // 1024
    out = small_fs(size_kib // 2) / "out"  # room for about half the set
    assert main([*GENERATE, "--out", str(out)]) == 2
    line = _error_line(capsys, "generate")
    assert line.startswith(f"rgm generate: error: No space left on device: {out}/shard-000")
    assert "left on its filesystem); free some space, then re-run the same command" in line
    assert not (out / MANIFEST_NAME).exists() and 0 < len(list(out.glob("shard-*.parquet"))) < 10
    small_fs(4 * size_kib)  # space again: the same command continues
    assert main([*GENERATE, "--out", str(out)]) == 0
    assert verify_sample_set(out) == [] and fd.fingerprint(out) == reference
    capsys.readouterr()

    fresh = out.with_name("fresh")
    small_fs(4 * size_kib, "ro")
    assert main([*GENERATE, "--out", str(fresh)]) == 2
    line = _error_line(capsys, "generate")
    assert line.startswith(f"rgm generate: error: Read-only file system: {fresh.parent}/.fresh")  # its lock file
    assert "make it writable or choose another output" in line
    small_fs(4 * size_kib, "rw")
    assert main([*GENERATE, "--out", str(fresh)]) == 0 and fd.fingerprint(fresh) == reference


@pytest.fixture
def full_disk_at(monkeypatch):
    """``full_disk_at(k)``: the k-th Parquet write from now on fails as pyarrow fails on a full disk."""
    real = pq.write_table
    calls = [0]

    def arm(k: int) -> None:
        def write_table(table, where, *args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise OSError(errno.ENOSPC, PYARROW_ENOSPC)
            return real(table, where, *args, **kwargs)
        calls[0] = 0
        monkeypatch.setattr(pq, "write_table", write_table)

    yield arm
    monkeypatch.setattr(pq, "write_table", real)


def test_generate_on_a_simulated_full_disk(ray_local, tmp_path, full_disk_at, capsys):
    """The same, where no filesystem can be mounted: the 3rd shard write fails."""
    assert main([*GENERATE, "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "out"
    full_disk_at(3)
    assert main([*GENERATE, "--out", str(out)]) == 2
    line = _error_line(capsys, "generate")
    assert line.startswith(f"rgm generate: error: No space left on device: {out / 'shard-00002.parquet'} (")
    assert sorted(p.name for p in out.glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (out / MANIFEST_NAME).exists()
    full_disk_at(0)
    assert main([*GENERATE, "--out", str(out)]) == 0
    assert fd.fingerprint(out) == fd.fingerprint(tmp_path / "reference")


@pytest.fixture(scope="module")
def weigh_inputs(tmp_path_factory, fmnist_test):
    """Real test images as 'real' and a darkened copy as 'generated', 4 shards each."""
    return fd.write_weigh_inputs(tmp_path_factory.mktemp("weigh_inputs"), fmnist_test.images)


@pytest.mark.faults_long  # three weigh runs: half a minute on 2 cores
def test_weigh_on_a_simulated_full_disk_leaves_no_finished_output(ray_local, tmp_path, weigh_inputs, full_disk_at,
                                                                  capsys):
    def weigh(out):
        return main(["weigh", "--real", str(weigh_inputs / "real"), "--samples", str(weigh_inputs / "gen"),
                     "--out", str(out), "--backbone", "cnn", "--epochs", "1", "--workers", "1", "--blocks", "0",
                     "--no-mlflow"])

    assert weigh(tmp_path / "out") == 0
    shutil.move(tmp_path / "out", tmp_path / "reference")
    full_disk_at(2)  # the weighted set's 2nd shard
    assert weigh(tmp_path / "out") == 2
    line = _error_line(capsys, "weigh")
    assert line.startswith(f"rgm weigh: error: No space left on device: {tmp_path / 'out' / 'weighted'}/shard-00001")
    assert not weigh_complete(tmp_path / "out") and not (tmp_path / "out" / "weighted").exists()
    full_disk_at(0)
    assert weigh(tmp_path / "out") == 0  # resumes into the unfinished output
    assert fd.fingerprint(tmp_path / "out") == fd.fingerprint(tmp_path / "reference")


def test_resample_on_a_simulated_full_disk_leaves_no_output(ray_local, tmp_path, full_disk_at, capsys):
    fd.write_weighted_set(tmp_path / "weighted", shards=3, side=4, seed=2)

    def resample(out):
        return main(["resample", "--samples", str(tmp_path / "weighted"), "--k", "90", "--target-ess", "100",
                     "--shard-size", "30", "--out", str(out), "--no-mlflow"])

    assert resample(tmp_path / "reference") == 0
    full_disk_at(3)
    assert resample(tmp_path / "out") == 2
    line = _error_line(capsys, "resample")
    assert line.startswith(f"rgm resample: error: No space left on device: {tmp_path / 'out' / 'shard-00002.parquet'}")
    assert not (tmp_path / "out").exists() and fd.hidden_leftovers(tmp_path) == []  # nothing, not even a temporary
    full_disk_at(0)
    assert resample(tmp_path / "out") == 0
    assert fd.fingerprint(tmp_path / "out") == fd.fingerprint(tmp_path / "reference")
