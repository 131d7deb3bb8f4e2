"""Issue 19, driver crash and clean interruption: a stage's driver SIGKILLed (or Ctrl-C'd) at counted points
resumes on re-run to the bytes of an undisturbed run, and nothing half-written is ever taken for finished.

Each killed driver runs in its own session (``fault_driver.run_killed``) against this module's Ray
cluster (the first generate crash starts a local Ray of its own instead, to see what a dead driver's
local Ray leaves behind). Kill points are counts taken from the undisturbed run (atomic publications,
progress updates), never times. The default tests chain two or three crashes per stage, each re-run
continuing the last; the ``faults_long`` variants kill each stage once at every publication it makes,
and the whole pipeline at every stage boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import fault_driver as fd
from rgm_ray.generate import GenerateSpec
from rgm_ray.generate import is_complete as generate_complete
from rgm_ray.resample import ResampleConfig, ResampleSpec
from rgm_ray.resample import is_complete as resample_complete
from rgm_ray.models.checkpoint import load_trainer_state
from rgm_ray.store import MANIFEST_NAME, SampleSet, verify_sample_set
from rgm_ray.weigh import is_complete as weigh_complete

pytestmark = [pytest.mark.ray, pytest.mark.faults]

PLUGIN = {"generator": "rgm_ray.generate.example_plugin:make", "generator_args": {"size": 16}}


@pytest.fixture(scope="module")
def address():
    """One Ray cluster for the module that subprocess drivers can join (a local ``init_ray`` Ray listens on
    loopback for its own driver only); its workers can import ``fault_driver`` (the gated plugin)."""
    import ray
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", fd.with_tests_on_path()["PYTHONPATH"])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()
    mp.undo()


def _reference(job: dict[str, Any], tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """Run ``job`` undisturbed into ``tmp_path/out`` and move it to ``tmp_path/reference`` (crashed runs then
    write the same path); returns its fingerprint and the names it published, in order."""
    with fd.recording_renames() as names:
        fd.run_job(job)
    shutil.move(tmp_path / "out", tmp_path / "reference")
    return fd.fingerprint(tmp_path / "reference"), names


def _every_publication(names: list[str]) -> list[dict[str, Any]]:
    """One kill point before each publication of an undisturbed run (the n-th rename onto that name)."""
    return [{"rename": name, "at": names[:i + 1].count(name)} for i, name in enumerate(names)]


def _kill_each_then_resume(job, kills, tmp_path, reference, unfinished: Callable[[], bool]) -> None:
    """For each kill point: a fresh output, a driver killed there, then an undisturbed re-run to the reference."""
    for kill in kills:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        fd.run_killed(job, kill, tmp_path / "jobs")
        assert unfinished(), f"taken for finished after a kill at {kill}"
        fd.run_job(job)
        assert fd.fingerprint(tmp_path / "out") == reference, f"different bytes after a kill at {kill}"


# --- generate ----------------------------------------------------------------------------------------------


def _generate_job(tmp_path, address):
    spec = {**PLUGIN, "out": str(tmp_path / "out"), "num_samples": 96, "shard_size": 16, "seed": 3}
    return {"stage": "generate", "spec": spec, "cluster": {"workers": 1, "address": address}}


def _generate_unfinished(job) -> Callable[[], bool]:
    out = Path(job["spec"]["out"])
    return lambda: not generate_complete(GenerateSpec(**job["spec"])) and not (out / MANIFEST_NAME).exists()


def test_generate_driver_killed_twice_resumes_to_identical_bytes(address, tmp_path):
    job = _generate_job(tmp_path, address)
    reference, names = _reference(job, tmp_path)
    shards = fd.count(names, "shard-*.parquet")
    assert shards == 6 and names[-1] == MANIFEST_NAME
    out, unfinished = tmp_path / "out", _generate_unfinished(job)
    # 1: one shard published, the 2nd written under its temporary name; this driver runs its own local Ray
    seconds = fd.run_killed({**job, "cluster": {"workers": 1}}, {"rename": "shard-*", "at": 2}, tmp_path / "jobs",
                            ray_exit_timeout=30)
    print(f"a SIGKILLed driver's local Ray (GCS, raylet, workers) was gone {seconds:.1f} s later")
    assert unfinished() and len(list(out.glob("shard-*.parquet"))) == 1
    with pytest.raises(Exception, match=f"{MANIFEST_NAME}: missing"):
        SampleSet(out)
    # 2: the re-run continues and draws every other shard, then dies before publishing the manifest
    fd.run_killed(job, {"rename": MANIFEST_NAME, "at": 1}, tmp_path / "jobs")
    assert unfinished() and len(list(out.glob("shard-*.parquet"))) == shards
    result = fd.run_job(job)
    assert result.generated_shards == 0 and result.reused_shards == shards
    assert not unfinished() and verify_sample_set(out) == []
    assert fd.fingerprint(out) == reference
    assert all(name.endswith(".tmp") for name in fd.hidden_leftovers(out))  # killed writes: never published


@pytest.mark.faults_long
def test_generate_driver_killed_at_every_publication(address, tmp_path):
    job = _generate_job(tmp_path, address)
    reference, names = _reference(job, tmp_path)
    _kill_each_then_resume(job, _every_publication(names), tmp_path, reference, _generate_unfinished(job))


# --- weigh ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weigh_inputs(tmp_path_factory, fmnist_test):
    """Real test images as 'real' and a darkened copy as 'generated', 4 shards each."""
    return fd.write_weigh_inputs(tmp_path_factory.mktemp("weigh_inputs"), fmnist_test.images)


def _weigh_job(tmp_path, address, inputs):
    # one scorer, Ray Data's own blocks: the quickest scoring pass (neither changes a weight)
    return {"stage": "weigh", "cluster": {"workers": 1, "cpus_per_worker": 0.5, "address": address},
            "spec": {"real": str(inputs / "real"), "samples": str(inputs / "gen"), "out": str(tmp_path / "out"),
                     "config": {"backbone": "cnn", "head": {"epochs": 1}}, "scoring": {"batch_size": 32, "blocks": 0}}}


def _weigh_unfinished(tmp_path) -> Callable[[], bool]:
    return lambda: not weigh_complete(tmp_path / "out") and not (tmp_path / "out" / "_complete.json").exists()


def test_weigh_driver_killed_while_scoring_and_before_publishing_resumes_to_identical_bytes(
        address, weigh_inputs, tmp_path):
    job = _weigh_job(tmp_path, address, weigh_inputs)
    reference, names = _reference(job, tmp_path)
    assert names[-1] == "_complete.json" and fd.count(names, "shard-*.parquet") == 4
    unfinished = _weigh_unfinished(tmp_path)
    fd.run_killed(job, {"bar": "score", "at": 1}, tmp_path / "jobs")  # Ray Data is scoring
    assert unfinished() and not (tmp_path / "out" / "weighted").exists()
    fd.run_killed(job, {"rename": "_complete.json", "at": 1}, tmp_path / "jobs")  # all written but the marker
    assert unfinished() and SampleSet(tmp_path / "out" / "weighted")  # a finished weighted set is not 'done'
    fd.run_job(job)  # resumes into the unfinished output: no --overwrite needed
    assert weigh_complete(tmp_path / "out") and fd.fingerprint(tmp_path / "out") == reference


@pytest.mark.faults_long
def test_weigh_driver_killed_at_every_publication(address, weigh_inputs, tmp_path):
    job = _weigh_job(tmp_path, address, weigh_inputs)
    reference, names = _reference(job, tmp_path)
    _kill_each_then_resume(job, _every_publication(names), tmp_path, reference, _weigh_unfinished(tmp_path))


# --- resample -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weighted_set(tmp_path_factory):
    """A weighted set of 4 shards (random log-weights, tiny images)."""
    path = tmp_path_factory.mktemp("weighted") / "set"
    fd.write_weighted_set(path, shards=4, side=4, seed=5)
    return path


def _resample_job(tmp_path, address, weighted_set):
    config = {"k": 120, "target_ess": 150.0, "shard_size": 50}
    return {"stage": "resample", "cluster": {"address": address},
            "spec": {"samples": str(weighted_set), "out": str(tmp_path / "out"), "config": config}}


def _resample_unfinished(job) -> Callable[[], bool]:
    spec = job["spec"]
    spec = ResampleSpec(spec["samples"], spec["out"], ResampleConfig(**spec["config"]))
    return lambda: not resample_complete(spec) and not Path(spec.out).exists()


def test_resample_driver_killed_while_selecting_and_writing_resumes_to_identical_bytes(
        address, weighted_set, tmp_path):
    job = _resample_job(tmp_path, address, weighted_set)
    reference, names = _reference(job, tmp_path)
    assert names[-1] == "out" and fd.count(names, "shard-*.parquet") == 3
    unfinished = _resample_unfinished(job)
    for kill in ({"bar": "resample: top-k", "at": 2},  # mid-selection
                 {"rename": "out", "at": 1}):  # the output complete under its temporary name
        fd.run_killed(job, kill, tmp_path / "jobs")
        assert unfinished()
    fd.run_job(job)
    assert not unfinished() and fd.fingerprint(tmp_path / "out") == reference


@pytest.mark.faults_long
def test_resample_driver_killed_at_every_publication(address, weighted_set, tmp_path):
    job = _resample_job(tmp_path, address, weighted_set)
    reference, names = _reference(job, tmp_path)
    _kill_each_then_resume(job, _every_publication(names), tmp_path, reference, _resample_unfinished(job))


# --- the pipeline ---------------------------------------------------------------------------------------------

PIPELINE = ["--preset", "tiny", "--no-mlflow", "--workers", "1", "--set", "pipeline.generators=[vae]",
            "--set", "generate.num_samples=96", "--set", "generate.shard_size=32", "--set", "evaluate.k=48",
            "--set", "resample.k=48", "--set", "resample.target_ess=48", "--set", "domain.train_images=512"]


TIMING_COLUMNS = ("training minutes", "minutes per 250 samples (one worker)", "samples/s (all workers)", "seconds")


def _report_tables(run: Path) -> list[str]:
    """``report.md`` without what measures this machine rather than the results: the wall-time line and the
    tables' timing columns (a stage recovered after a crash has no timing of its own to report)."""
    lines, dropped = [], set()
    for line in (run / "report.md").read_text().splitlines():
        if line.startswith("Wall time"):
            continue
        cells = line.strip("|").split("|") if line.startswith("|") else None
        if cells is None:
            dropped = set()
        elif not dropped and not set(cells[0]) <= set("-"):  # a header row
            dropped = {i for i, cell in enumerate(cells) if cell.strip() in TIMING_COLUMNS} or {-1}
        lines.append(line if cells is None else "|".join(c for i, c in enumerate(cells) if i not in dropped))
    return lines


def _pipeline_outputs(run: Path) -> dict[str, Any]:
    """Every stage's artefacts; not Ray Tune's own trial logs and state, pipeline.json's facts about the runs
    (timings, shards reused), the report (compared by its tables) or the trainer states' wall time."""
    prints: dict[str, Any] = fd.fingerprint(run, skip=("ssl/ray_results/", "pipeline.json", "report.md",
                                                       "report.html"))
    for name in [name for name in prints if name.endswith("/checkpoint/trainer.pt")]:
        state = load_trainer_state((run / name).parent)  # weights_only, as resuming reads it
        state.pop("elapsed")
        prints[name] = _content(state)
    return prints


def _content(value: Any) -> Any:
    """A nested state (dicts, lists, tensors) as plain values, every tensor as its dtype, shape and bytes' digest."""
    import torch

    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes()
        return str(data.dtype), tuple(data.shape), hashlib.sha256(raw).hexdigest()
    return value


@pytest.mark.faults_long
def test_pipeline_driver_killed_at_every_stage_boundary_and_inside_stages(address, tmp_path):
    run = tmp_path / "out"
    job = {"stage": "pipeline", "argv": ["pipeline", *PIPELINE, "--address", address, "--out", str(run)]}
    fd.run_job(job)
    shutil.move(run, tmp_path / "reference")
    reference = tmp_path / "reference"
    stages = json.loads((reference / "pipeline.json").read_text())["stages"]
    # each stage's end, before it is recorded (pipeline.json is rewritten after every stage, skipped or
    # not), and inside the stages that publish in steps; each re-run resumes where the last one died
    kills = []
    for k, stage in enumerate(stages, 1):
        if stage.startswith("generate_"):
            kills.append({"rename": "shard-*", "at": 2})  # one shard published
        if stage.startswith("weigh_"):
            kills.append({"rename": "_complete.json", "at": 1})  # all written but the marker
        kills.append({"rename": "pipeline.json", "at": k})
    for kill in kills:
        fd.run_killed(job, kill, tmp_path / "jobs", timeout=600)
    fd.run_job(job)
    assert _pipeline_outputs(run) == _pipeline_outputs(reference)
    assert _report_tables(run) == [line.replace(str(reference), str(run)) for line in _report_tables(reference)]
    state, before = (json.loads((d / "pipeline.json").read_text()) for d in (run, reference))
    assert state["stages"] == before["stages"] and set(state["outputs"]) == set(before["outputs"])


# --- Ctrl-C -----------------------------------------------------------------------------------------------------


def _interrupt(argv: list[str], ready: Callable[[], bool], command: str) -> None:
    """Run the CLI ``argv`` in a session of its own (its own local Ray), press Ctrl-C (SIGINT to the process
    group, as a terminal does) once ``ready()``, and check: exit 130 within seconds, one line, no Ray
    process of its own left."""
    rgm = shutil.which("rgm", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([rgm, *argv], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=fd.with_tests_on_path())
    try:
        fd.wait_until(lambda: ready() or proc.poll() is not None, 180, "the point to interrupt at")
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)  # a generous bound: the measured time is printed, not asserted
        exit_seconds = time.monotonic() - sent
        assert proc.returncode == 130, err[-3000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith(f"rgm {command}: interrupted;") and "Traceback" not in err
        fd.wait_until(lambda: not fd.session_processes(proc.pid), 120, "the interrupted run's Ray processes to exit")
        print(f"Ctrl-C in {command}: exit {exit_seconds:.1f} s, every Ray process gone "
              f"{time.monotonic() - sent:.1f} s after")
    finally:
        fd.end_session(proc.pid)


def test_ctrl_c_exits_in_seconds_leaves_no_ray_processes_and_resumes(address, tmp_path):
    """Ctrl-C during ``rgm generate``, while its worker is drawing the second shard."""
    gate = tmp_path / "gate"
    gate.touch()
    out = tmp_path / "out"
    spec = {"generator": "fault_driver:GatedGenerator", "generator_args": {"gate": str(gate)}, "out": str(out),
            "num_samples": 64, "shard_size": 16}
    job = {"stage": "generate", "spec": spec, "cluster": {"workers": 1, "address": address}}
    reference, _ = _reference(job, tmp_path)
    gate.unlink()  # the interrupted run's worker draws shard 0, then waits at shard 1
    _interrupt(["generate", "--generator", spec["generator"], "--generator-arg", f"gate={gate}", "--num-samples", "64",
                "--shard-size", "16", "--workers", "1", "--out", str(out), "--no-mlflow"],
               lambda: (out / "shard-00000.parquet").exists(), "generate")
    assert not generate_complete(GenerateSpec(**spec)) and (out / "shard-00000.parquet").exists()
    gate.touch()
    result = fd.run_job(job)  # the manifest (and so its provenance) is written by the resumed run only
    assert result.reused_shards == 1 and fd.fingerprint(out) == reference


@pytest.mark.faults_long
def test_ctrl_c_while_weigh_scores_exits_in_seconds_and_resumes(address, weigh_inputs, tmp_path):
    """Ctrl-C during ``rgm weigh`` once its classifier is saved (Ray Data is then scoring, or writing)."""
    job = _weigh_job(tmp_path, address, weigh_inputs)
    reference, _ = _reference(job, tmp_path)
    out = tmp_path / "out"
    _interrupt(["weigh", "--real", str(weigh_inputs / "real"), "--samples", str(weigh_inputs / "gen"), "--out",
                str(out), "--backbone", "cnn", "--epochs", "1", "--workers", "1", "--blocks", "0", "--batch-size", "32",
                "--no-mlflow"], lambda: (out / "classifier").is_dir(), "weigh")
    assert not weigh_complete(out)
    fd.run_job(job)
    assert weigh_complete(out) and fd.fingerprint(out) == reference


@pytest.mark.faults_long
def test_ctrl_c_during_a_tune_sweep_exits_in_seconds_and_resumes(address, tmp_path):
    """Ctrl-C while Ray Tune trials run: Tune's own handler would end the sweep and hand back the trials so
    far as if it had finished; the sweep must instead stop, unfinished, and a re-run write the full tables."""
    from rgm_ray.cli.main import main
    from rgm_ray.tune import is_complete as sweep_complete

    config = str(Path(__file__).resolve().parent.parent / "tune_configs" / "ssl_smoke.yaml")
    sweep = ["tune", "--config", config, "--no-mlflow", "--set", "grid.seed=[0]", "--set", "train.steps_per_epoch=100",
             "--set", "train.train_subset=1000", "--set", "train.val_size=100", "--set", "train.test_subset=200"]
    tables = ("summary.md", "summary.csv", "trials.csv", "selected.csv")
    assert main([*sweep, "--out", str(tmp_path / "reference"), "--address", address]) == 0
    out = tmp_path / "out"
    _interrupt([*sweep, "--out", str(out)], lambda: any(out.glob("ray_results/*/*/params.json")), "tune")
    assert not sweep_complete(out) and not any((out / name).exists() for name in tables)
    assert main([*sweep, "--out", str(out), "--address", address]) == 0
    for name in tables:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
