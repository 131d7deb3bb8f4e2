"""Issue 17: progress written to a non-terminal (a Ray job log, CI, ``nohup``) is whole lines, one per
5 % or per interval, with rate and ETA, never a carriage return; on a terminal it stays a tqdm bar.

The unit tests drive :class:`LineProgress` with a fake clock; the last one runs ``rgm generate`` (the
example plugin, a few shards) with stderr to a pipe, as a Ray job's driver runs, and reads what it wrote.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from tqdm.auto import tqdm

from rgm_ray.cli import common
from rgm_ray.progress import SECONDS_ENV, LineProgress, line_interval, progress, progress_bar
from rgm_ray.runtime import VERBOSE_ENV, quiet_ray_data, ray_verbose

LINE = re.compile(r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\)"
                  r"(, (?P<rate>[\d.]+) \w+/s, elapsed \d\d:\d\d, ETA \d\d:\d\d)?(?P<postfix>.*)$")


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bar(total: int | None, clock: Clock, seconds: float = 30.0, **kwargs) -> tuple[LineProgress, io.StringIO]:
    out = io.StringIO()
    return LineProgress(total=total, desc="score", unit="img", file=out, clock=clock, seconds=seconds, **kwargs), out


def test_a_line_per_five_percent_with_rate_and_eta() -> None:
    clock = Clock()
    bar, out = _bar(1000, clock)
    for _ in range(100):  # 10 images per 0.25 s: 40 img/s, five updates (1.25 s) per 5 %
        clock.now += 0.25
        bar.update(10)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\n\n" not in text
    lines = text.splitlines()
    assert len(lines) == 1 + 20  # the start, then one per 5 %; close adds nothing after the 100 % line
    assert lines[0] == "score: 0/1000 img (0%)"
    parsed = [LINE.match(line).groupdict() for line in lines[1:]]
    assert [int(p["n"]) for p in parsed] == list(range(50, 1001, 50))
    assert [int(p["pct"]) for p in parsed] == list(range(5, 101, 5))
    assert all(float(p["rate"]) == 40 for p in parsed)
    assert lines[10] == "score: 500/1000 img (50%), 40 img/s, elapsed 00:12, ETA 00:12"


def test_a_fast_bar_is_its_first_and_last_line() -> None:
    clock = Clock()
    bar, out = _bar(1000, clock)
    for _ in range(100):  # the whole bar in 0.5 s: no percent line within MIN_SECONDS of the last
        clock.now += 0.005
        bar.update(10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [LINE.match(line)["n"] for line in lines] == ["0", "1000"]


def test_a_slow_bar_prints_every_interval_and_a_last_line() -> None:
    clock = Clock()
    bar, out = _bar(10_000, clock, seconds=30)
    for _ in range(7):  # 1 image per 10 s: a line every third update, long before 5 % (500 images)
        clock.now += 10
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [LINE.match(line)["n"] for line in lines] == ["0", "3", "6", "7"]
    assert lines[1] == "score: 3/10000 img (0%), 0.1 img/s, elapsed 00:30, ETA 27:46:10"


def test_resumed_bar_postfix_unknown_total_and_closing_twice() -> None:
    clock = Clock()
    bar, out = _bar(200, clock, initial=150)
    clock.now += 2
    bar.set_postfix({"loss": "0.250"}, val="0.9")
    bar.update(50)  # the rate counts this run's 50, not the 150 done before
    bar.close()
    bar.close()
    bar.update(5)
    assert out.getvalue().splitlines() == ["score: 150/200 img (75%)",
                                           "score: 200/200 img (100%), 25 img/s, elapsed 00:02, ETA 00:00, "
                                           "loss=0.250, val=0.9"]
    unsized, out = _bar(None, clock)
    with unsized:
        clock.now += 4
        unsized.update(8)
    # no total: no percentages and no ETA, just the count and its rate
    assert out.getvalue().splitlines() == ["score: 0 img", "score: 8 img, 2 img/s, elapsed 00:04"]


def test_iterables_count_through_the_same_lines() -> None:
    out = io.StringIO()
    assert list(progress(range(40), desc="export", unit="shard", file=out)) == list(range(40))
    lines = out.getvalue().splitlines()
    assert lines[0] == "export: 0/40 shard (0%)" and LINE.match(lines[-1])["n"] == "40" and len(lines) >= 2
    assert list(progress(iter("ab"), desc="x", disable=True, file=out)) == ["a", "b"]


def test_a_terminal_keeps_the_tqdm_bar() -> None:
    terminal = Terminal()
    bar = progress_bar(total=10, desc="train", unit="step", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    assert "\r" in terminal.getvalue()
    assert isinstance(progress(range(3), desc="x", file=terminal), tqdm)
    assert isinstance(progress_bar(total=10, desc="train", file=io.StringIO()), LineProgress)
    assert common.progress_bar is progress_bar and common.progress is progress  # what the commands hand to stages


def test_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(SECONDS_ENV, "2.5")
    assert line_interval() == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(SECONDS_ENV, bad)
        with pytest.raises(ValueError, match=SECONDS_ENV):
            line_interval()


def test_verbose_switch(monkeypatch) -> None:
    for value, verbose in (("1", True), ("yes", True), ("0", False), ("", False), (None, False)):
        if value is None:
            monkeypatch.delenv(VERBOSE_ENV, raising=False)
        else:
            monkeypatch.setenv(VERBOSE_ENV, value)
        assert ray_verbose() is verbose


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_data_console_keeps_only_warnings_unless_verbose(verbose, monkeypatch, capsys) -> None:
    """Ray Data's own console handler, as ``import ray.data`` sets it up: its per-dataset info lines and the
    bars-off notice go, its warnings stay (all of it with ``$RGM_RAY_VERBOSE``)."""
    import logging

    import ray.data

    monkeypatch.setenv(VERBOSE_ENV, "1" if verbose else "0")
    context = ray.data.DataContext.get_current()
    # Ray's console handler (not pytest's capture handlers), put back as ``import ray.data`` sets it up
    # (INFO, on this test's stderr): earlier tests in this process quieted it, or captured its stream
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and type(h).__module__.startswith("ray.")]
    notice = logging.getLogger("ray.data._internal.progress")
    levels, bars, notice_level = [h.level for h in handlers], context.enable_progress_bars, notice.level
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.INFO)
        handler.stream = sys.stderr  # not setStream: it flushes the old stream, maybe closed by now
    notice.setLevel(logging.NOTSET)
    try:
        context.enable_progress_bars = True
        quiet_ray_data()
        executor = logging.getLogger("ray.data._internal.execution.streaming_executor")
        executor.info("Starting execution of Dataset d_1")
        executor.warning("a warning that matters")
        notice.warning("Progress bars disabled")
        err = capsys.readouterr().err
        assert handlers and "a warning that matters" in err
        assert ("Starting execution" in err) is verbose and ("Progress bars disabled" in err) is verbose
        assert context.enable_progress_bars is verbose
    finally:
        for handler, level, stream in zip(handlers, levels, streams):
            handler.setLevel(level)
            handler.stream = stream
        context.enable_progress_bars = bars
        notice.setLevel(notice_level)


@pytest.mark.ray
def test_generate_writes_a_readable_log_when_stderr_is_a_pipe(tmp_path) -> None:
    """What a Ray job's log or CI gets from a command: progress lines and nothing else on stderr (none of
    Ray's start-up notices, nor the killed-backup-copy errors), and stdout is exactly the ``--json`` summary."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", VERBOSE_ENV)}
    out = tmp_path / "set"
    done = subprocess.run(
        [sys.executable, "-m", "rgm_ray.cli.main", "generate", "--generator", "rgm_ray.generate.example_plugin:make",
         "--generator-arg", "size=28", "--num-samples", "600", "--shard-size", "50", "--out", str(out),
         "--workers", "2", "--no-mlflow", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # nothing else on stdout
    assert summary["out"] == str(out)
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(LINE.match(line) and line.startswith("generate plugin: ") for line in lines), done.stderr
    counts = [int(LINE.match(line)["n"]) for line in lines]
    # the start and the end, and between them at most a line per shard (12), none within MIN_SECONDS
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 600 and 2 <= len(counts) <= 13
