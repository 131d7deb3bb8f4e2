"""The cluster docs, run: every command of cluster/README.md and of the README's cluster section on one machine.

The commands are read from the docs (``cluster_docs``) and their cluster values replaced by local ones
(``cluster_docs.local_values``: the ``tiny`` preset, a temporary run directory, the ports below), so the
docs and this test cannot drift apart. They run as a user would type them, in a shell whose ``HOME`` is
temporary (the auth token of ``ray get-auth-token --generate`` goes there): the set-up commands first,
then the MLflow server and the Ray head of "A head on your own machine" as services (each in a session of
its own, stopped as the docs say, with Ctrl-C), then every ``ray job`` command in the docs' order. The
``ray up`` / ``kubectl`` ones need the cloud and are checked by ``test_cluster_configs.py`` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import shlex
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster_docs import (ASSIGNMENT, REPO, command_kind, docs_text, local_values, localize, pipeline_commands,
                          run_folders, shell_commands)
from fault_driver import session_processes, wait_until

from rgm_ray.pipeline.history import TAG_STAGE
from rgm_ray.report.build import load_state
from rgm_ray.store import SampleSet, verify_sample_set
from rgm_ray.tracking import DEFAULT_EXPERIMENT, TAG_OUT, TAG_PARENT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Every port of the head, chosen free, so it never meets another Ray on this machine; the two variables
# move the metrics ports Ray otherwise fixes (44217, 44227).
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
                   "--node-manager-port", "--object-manager-port")
HEAD_PORT_ENV = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")
CLEAN_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
             "VIRTUAL_ENV", "PYTHONPATH")
PIPELINE_TIMEOUT, STAGE_TIMEOUT, START_TIMEOUT = 1800, 600, 120


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def answers(url: str) -> bool:
    """True once anything answers HTTP at ``url`` (an error status too: the server is up)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@dataclass
class Shell:
    """The docs' commands as a shell would run them from the repository root: ``export`` and ``source
    .venv/bin/activate`` change its environment, a ``VAR=value`` prefix one command's."""

    env: dict[str, str]
    logs: Path
    services: list[subprocess.Popen] = field(default_factory=list)

    def _split(self, argv: list[str]) -> tuple[dict[str, str], list[str]]:
        """The environment of one command (its ``VAR=value`` prefix applied) and the command itself."""
        n = next(i for i, word in enumerate(argv) if not ASSIGNMENT.match(word))
        return {**self.env, **dict(word.split("=", 1) for word in argv[:n])}, argv[n:]

    def setup(self, argv: list[str]) -> None:
        if argv[0] == "export":
            self.env.update(word.split("=", 1) for word in argv[1:])
        elif argv[0] == "source":
            assert argv[1:] == [".venv/bin/activate"], argv
            self.env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{self.env['PATH']}"
            self.env["VIRTUAL_ENV"] = str(REPO / ".venv")
        else:
            done = self.run(argv, timeout=60)
            assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr[-2000:]}"

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        env, argv = self._split(argv)
        return subprocess.run(argv, env=env, cwd=REPO, timeout=timeout, capture_output=True, text=True)

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        """``argv`` in a session of its own (as in a terminal of its own), its output in ``logs/name.log``."""
        env, argv = self._split(argv)
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.services.append(proc)
        return proc

    def stop_services(self) -> None:
        """Ctrl-C to each service's session, as the docs stop them; SIGKILL for what outlives a minute."""
        for proc in reversed(self.services):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                wait_until(lambda: not session_processes(proc.pid), 60, f"{proc.args[:2]} to stop", poll=0.5)
            except AssertionError:
                for pid, _ in session_processes(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            proc.wait()


@dataclass
class RunNode:
    """An MLflow run and the runs whose ``mlflow.parentRunId`` is it, as the MLflow UI nests them."""

    run: Any
    children: list["RunNode"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run.info.run_name

    def tag(self, key: str) -> str | None:
        return self.run.data.tags.get(key)


def run_trees(tracking_uri: str, experiment: str) -> list[RunNode]:
    """Every run of ``experiment`` on the server, as trees under its top-level runs (oldest first)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on {tracking_uri}"
    nodes = {run.info.run_id: RunNode(run) for run in
             client.search_runs([found.experiment_id], max_results=10_000, order_by=["attributes.start_time ASC"])}
    roots = []
    for node in nodes.values():
        parent = node.tag(TAG_PARENT)
        (nodes[parent].children if parent in nodes else roots).append(node)
    return roots


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The docs' commands, run: set-up, services, then every job in order (results kept for the checks)."""
    base = tmp_path_factory.mktemp("cluster_job")
    home, logs, run = base / "home", base / "logs", base / "run"
    home.mkdir()
    logs.mkdir()
    # Ray's socket paths must stay short (108 bytes), so its session directory is not under pytest's tmp path.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rgm-ray-"))
    *head_ports, mlflow_port = free_ports(len(HEAD_PORT_FLAGS) + len(HEAD_PORT_ENV) + 1)
    head_url = f"http://127.0.0.1:{head_ports[1]}"
    text = localize(docs_text(), local_values(str(run), str(home), head_url, mlflow_port))
    commands = shell_commands(text)
    assert "/mnt/shared" not in text and "HEAD" not in text
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    # the venv comes onto the PATH only by the docs' `source .venv/bin/activate` (another python lacks torch)
    path = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if Path(d) != REPO / ".venv" / "bin")
    shell = Shell({**env, "PATH": path, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}, logs)
    try:
        for argv in (a for a in commands if command_kind(a) == "setup"):
            shell.setup(argv)
        token = home / ".ray" / "auth_token"
        assert token.is_file() and token.stat().st_mode & 0o777 == 0o600
        for argv in (a for a in commands if command_kind(a) == "service"):
            if "mlflow" in argv:
                shell.start(argv, "mlflow")
                wait_until(lambda: answers(f"http://127.0.0.1:{mlflow_port}/health"), START_TIMEOUT, "mlflow server")
            else:
                ports = [f for flag, port in zip(HEAD_PORT_FLAGS, head_ports) for f in (flag, str(port))]
                moved = [f"{var}={port}" for var, port in zip(HEAD_PORT_ENV, head_ports[len(HEAD_PORT_FLAGS):])]
                head = shell.start([*moved, *argv, *ports, "--temp-dir", str(ray_tmp)], "head")
                wait_until(lambda: "Ray runtime started" in (logs / "head.log").read_text()
                           and answers(f"{head_url}/api/version"), START_TIMEOUT, "the Ray head")
        jobs = []
        for argv in (a for a in commands if command_kind(a) == "job"):
            timeout = PIPELINE_TIMEOUT if "pipelines.full" in argv else STAGE_TIMEOUT
            jobs.append((argv, shell.run(argv, timeout)))
        yield {"run": run, "jobs": jobs, "head": head, "mlflow": f"http://127.0.0.1:{mlflow_port}", "text": text}
    finally:
        shell.stop_services()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _entrypoints(cluster, module: str) -> list[list[str]]:
    """The ``python -m module ...`` parts of the jobs that ran ``module``, in the docs' order."""
    return [argv for argv in pipeline_commands(cluster["text"]) if argv[2] == module]


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_every_job_succeeds(cluster):
    for argv, done in cluster["jobs"]:
        assert done.returncode == 0, f"{' '.join(argv)[:300]} failed:\n{(done.stdout + done.stderr)[-4000:]}"
        if argv[:3] == ["ray", "job", "submit"]:
            assert "succeeded" in done.stdout + done.stderr
    logs = next(done for argv, done in cluster["jobs"] if argv[:3] == ["ray", "job", "logs"])
    assert "pipeline 'tiny' finished" in logs.stdout  # the entrypoint's own summary, read back by `ray job logs`


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses of the TCP sockets ``pids`` listen on (``ss``: iproute2)."""
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return {line.split()[3] for line in lines
            if {int(pid) for pid in re.findall(r"pid=(\d+)", line)} & pids}


def test_the_head_listens_on_loopback_only(cluster):
    addresses = listening_addresses({pid for pid, _ in session_processes(cluster["head"].pid)})
    assert addresses and all(re.match(r"^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):\d+$", a) for a in addresses), addresses


def test_the_run_directory_holds_the_documented_folders(cluster):
    run = cluster["run"]
    missing = [name for name in run_folders() if not (run / name).exists()]
    assert not missing, f"cluster/README.md names folders the pipeline did not write: {missing}"
    assert load_state(run)["preset"] == "tiny"


def test_single_stage_jobs_write_their_sets_from_the_runs_folders(cluster):
    generate = _entrypoints(cluster, "pipelines.generate")  # cluster/README.md's, then the README's (resumed)
    [weigh] = _entrypoints(cluster, "pipelines.weigh")
    [resample] = _entrypoints(cluster, "pipelines.resample")
    run = cluster["run"]
    assert {(Path(_value(argv, "--checkpoint")), Path(_value(argv, "--out")).parent) for argv in generate} == {
        (run / "models" / "pixelcnn", run / "samples")}
    samples = _value(generate[0], "--out")
    assert verify_sample_set(samples) == []
    assert len(SampleSet(samples)) == int(_value(generate[0], "--num-samples"))
    assert _value(weigh, "--samples") == samples
    assert _value(resample, "--samples") == f"{_value(weigh, '--out')}/weighted"
    weighted = SampleSet(_value(resample, "--samples")).read(["sample_id", "log_weight"])
    assert np.isfinite(weighted["log_weight"]).all() and len(weighted["sample_id"]) == len(SampleSet(samples))
    ids = SampleSet(_value(resample, "--out")).read(["sample_id"])["sample_id"]
    assert len(ids) == len(np.unique(ids)) == int(_value(resample, "--k"))
    assert np.isin(ids, weighted["sample_id"]).all()


def test_mlflow_server_holds_the_pipeline_tree_and_each_stage_job(cluster):
    state = load_state(cluster["run"])
    [submit] = [argv for argv, _ in cluster["jobs"] if "pipelines.full" in argv]
    experiment = json.loads(_value(submit, "--runtime-env-json"))["env_vars"]["MLFLOW_EXPERIMENT_NAME"]
    [pipeline] = [root for root in run_trees(cluster["mlflow"], experiment) if root.name == "pipeline-tiny"]
    assert pipeline.run.info.status == "FINISHED"
    stages = {child.tag(TAG_STAGE): child for child in pipeline.children}
    assert set(stages) == set(state["stages"])
    assert all(child.run.info.status == "FINISHED" for child in stages.values())
    assert stages["ssl"].children, "the ssl stage run has no Tune trials under it"
    # the single-stage jobs: top-level runs in the default experiment, each tagged with its --out
    outs = {root.tag(TAG_OUT) for root in run_trees(cluster["mlflow"], DEFAULT_EXPERIMENT)
            if root.run.info.status == "FINISHED"}
    for module in ("pipelines.generate", "pipelines.weigh", "pipelines.resample"):
        for argv in _entrypoints(cluster, module):
            assert str(Path(_value(argv, "--out")).resolve()) in outs, module


# stages whose outputs are files logged as artefacts (the others' are a checkpoint: a logged model)
ARTEFACT_STAGES = ("generate_", "weigh_", "resample_", "evaluate", "audit", "ssl", "report")


def test_each_stage_run_has_its_params_and_artefacts_and_a_generator_model_samples(cluster):
    """The issue's MLflow tree, read from the server: every stage run has params, every stage writing
    files has them as artefacts, and a train stage's logged generator loads with ``mlflow.pytorch`` and
    samples exactly what its checkpoint does."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from rgm_ray.models import load_checkpoint
    from rgm_ray.models.registry import get_family
    from rgm_ray.tracking import TAG_MODEL_URI

    [submit] = [argv for argv, _ in cluster["jobs"] if "pipelines.full" in argv]
    experiment = json.loads(_value(submit, "--runtime-env-json"))["env_vars"]["MLFLOW_EXPERIMENT_NAME"]
    [pipeline] = [root for root in run_trees(cluster["mlflow"], experiment) if root.name == "pipeline-tiny"]
    stages = {child.tag(TAG_STAGE): child for child in pipeline.children}
    client = MlflowClient(tracking_uri=cluster["mlflow"])
    no_params = [name for name, node in stages.items() if name != "report" and not node.run.data.params]
    assert not no_params, f"stage runs without params: {no_params}"
    no_files = [name for name, node in stages.items() if name.startswith(ARTEFACT_STAGES)
                and not client.list_artifacts(node.run.info.run_id)]
    assert not no_files, f"stage runs without artefacts: {no_files}"
    uri = stages["train_vae"].tag(TAG_MODEL_URI)
    assert uri, "train_vae logged no generator model"
    mlflow.set_tracking_uri(cluster["mlflow"])
    images = mlflow.pytorch.load_model(uri).sample(3, seed=7)
    expected = get_family("vae").draw(load_checkpoint(cluster["run"] / "models" / "vae" / "checkpoint"), 3, seed=7)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (3, 1, 28, 28)
    np.testing.assert_array_equal(images.numpy(), expected)
