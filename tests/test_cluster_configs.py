"""The shipped cluster configs load, validate, and point at code that exists.

The launcher YAML is validated against the JSON schema inside the installed ray package (the first
thing ``ray up`` checks) and by Ray's own config preparation; the KubeRay RayJob is checked for the
fields KubeRay needs. Every ``python -m pipelines.X`` named by the manifest, cluster/README.md or the
README's cluster section must be a module of this repository that accepts the flags it is given. No Ray
is started (``test_cluster_job.py`` runs the documented commands).
"""

from __future__ import annotations

import copy
import json
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.runtime_env import RuntimeEnvConfig
from cluster_docs import (REPO, command_kind, docs_text, fenced_shell, local_values, localize, pipeline_commands,
                          readme_job_commands, shell_commands)

CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
RAYJOB = CLUSTER / "rayjob-paper.yaml"
README = CLUSTER / "README.md"
STAGE_MODULES = {"pipelines.full", "pipelines.generate", "pipelines.weigh", "pipelines.resample"}


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def makefile_torch_pins() -> set[str]:
    """The torch/torchvision pins of the local install, so the cluster installs the same pair."""
    match = re.search(r"^TORCH_PINS\s*\?=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile has no TORCH_PINS line"
    return set(match.group(1).split())


def readme_shell() -> str:
    """The commands of cluster/README.md and of the README's cluster section."""
    return fenced_shell() + "\n" + readme_job_commands()


def module_of(argv: list[str]) -> str:
    assert argv[:2] == ["python", "-m"], f"not a 'python -m' command: {argv}"
    return argv[2]


def module_file(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


def long_flags(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def pod_specs(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return load_yaml(LAUNCHER)


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return load_yaml(RAYJOB)


@pytest.fixture(scope="module")
def ray_schema() -> dict[str, Any]:
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def entrypoint(rayjob) -> list[str]:
    commands = pipeline_commands(rayjob["spec"]["entrypoint"])
    assert len(commands) == 1, rayjob["spec"]["entrypoint"]
    return commands[0]


@pytest.fixture(scope="module")
def readme_commands() -> list[list[str]]:
    return pipeline_commands(readme_shell())


# --- Ray cluster launcher ---------------------------------------------------------------------


def test_launcher_matches_ray_schema(launcher, ray_schema):
    jsonschema.validate(launcher, ray_schema)


@pytest.mark.parametrize("breakage", ["unknown top-level key", "fractional GPU count", "node type without node_config"])
def test_ray_schema_rejects_broken_launcher(launcher, ray_schema, breakage):
    """The schema check has teeth: each of these mistakes in our file would be caught."""
    broken = copy.deepcopy(launcher)
    gpu_type = next(name for name, t in broken["available_node_types"].items() if t["resources"].get("GPU"))
    if breakage == "unknown top-level key":
        broken["setup_command"] = broken["setup_commands"]
    elif breakage == "fractional GPU count":
        broken["available_node_types"][gpu_type]["resources"]["GPU"] = 0.5
    else:
        del broken["available_node_types"][gpu_type]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema)


def test_launcher_passes_ray_config_preparation(launcher):
    """What ``ray up`` runs before contacting the cloud: defaults merged, then Ray's own validation
    (schema plus cross-field rules such as head_node_type naming a defined node type)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_launcher_has_cpu_head_and_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    assert types[head]["resources"].get("GPU", 0) == 0
    assert not re.match(r"^[gp]\d", types[head]["node_config"]["InstanceType"]), "head is a GPU instance"
    gpu_workers = {name: t for name, t in types.items() if name != head and t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker node type offers a GPU"
    for name, node_type in gpu_workers.items():
        # AWS GPU instance families are g* and p* (g4dn, g5, p4d, ...).
        assert re.match(r"^[gp]\d", node_type["node_config"]["InstanceType"]), name
        assert node_type["max_workers"] >= 1
        assert node_type["max_workers"] <= launcher["max_workers"]


def test_launcher_setup_installs_project_and_torch_pair(launcher):
    setup = launcher["setup_commands"]
    assert any(all(pin in command for pin in makefile_torch_pins()) for command in setup), setup
    editable = [m.group(1) for c in setup if (m := re.search(r"pip install .*-e\s+(\S+)", c))]
    assert editable, f"no 'pip install -e' of the project in setup_commands: {setup}"
    # The installed directory is synced from this repository and holds what pip needs.
    mounts = launcher["file_mounts"]
    for required in ("pyproject.toml", "setup.py", "rgm_ray", "pipelines", "tune_configs"):
        assert f"{editable[0]}/{required}" in mounts, required
    for remote, local in mounts.items():
        if not local.startswith("~"):  # ~ is the submitting user's home (the auth token)
            assert (REPO / local).exists(), f"file_mounts {remote}: {local} missing in the repository"


def test_launcher_sets_mlflow_and_token_auth_on_every_node(launcher):
    """Both come from setup_commands (run on every node, before ``ray start``), so head and workers
    agree: a token-auth mismatch would stop workers joining the head."""
    setup = "\n".join(launcher["setup_commands"])
    assert re.search(r"export MLFLOW_TRACKING_URI=https?://", setup)
    assert "export RAY_AUTH_MODE=token" in setup
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("ray start" in command for command in launcher[key]), key


# --- KubeRay RayJob ---------------------------------------------------------------------------


def test_rayjob_required_fields(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["workerGroupSpecs"], "no worker groups"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert group.get("minReplicas", 0) <= group["replicas"] <= group["maxReplicas"]
    for pod in pod_specs(cluster):
        assert pod["containers"]
        for container in pod["containers"]:
            assert container["name"]
            # Every image carries the cluster's Ray version, so head and workers agree with rayVersion.
            assert container["image"].startswith(f"rayproject/ray:{cluster['rayVersion']}-"), container["image"]


def test_rayjob_has_gpu_workers(rayjob):
    gpu_counts = []
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
            if limit:
                # Kubernetes refuses extended resources whose request differs from the limit.
                assert int(resources.get("requests", {}).get("nvidia.com/gpu", limit)) == limit
            gpu_counts.append(limit)
    assert max(gpu_counts) >= 1, "no worker container requests nvidia.com/gpu"


def test_rayjob_runtime_env_installs_project_and_tracks_to_mlflow(rayjob):
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    assert runtime_env["working_dir"]
    pip = runtime_env["pip"]
    assert makefile_torch_pins() <= set(pip)
    assert any(requirement.startswith("rgm_ray") for requirement in pip), pip
    # CUDA torch takes a fresh node longer to install than Ray's default setup timeout
    config = RuntimeEnvConfig(**runtime_env["config"])  # a misspelt key is refused here, only warned by Ray
    assert config["setup_timeout_seconds"] > RuntimeEnvConfig()["setup_timeout_seconds"]


def test_rayjob_paths_are_on_the_shared_volume(rayjob, entrypoint):
    """Every pod mounts the same PVC at the same path, and the job reads and writes only there."""
    mounts = set()
    for pod in pod_specs(rayjob["spec"]["rayClusterSpec"]):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims, "a pod without the shared volume"
        for container in pod["containers"]:
            mounts |= {(m["mountPath"], claims[m["name"]]) for m in container["volumeMounts"] if m["name"] in claims}
    assert len(mounts) == 1, f"pods disagree on the shared volume: {mounts}"
    (mount_path, _), = mounts
    # Absolute paths among the arguments, including the values of key=value overrides.
    paths = [arg.split("=", 1)[-1] for arg in entrypoint if arg.split("=", 1)[-1].startswith("/")]
    assert option_values(entrypoint, "--out")[0] in paths
    for path in paths:
        assert path.startswith(mount_path.rstrip("/") + "/"), path


def test_rayjob_entrypoint_runs_full_pipeline_module(entrypoint):
    assert module_of(entrypoint) == "pipelines.full"
    assert option_values(entrypoint, "--preset") == ["paper"]
    assert module_file("pipelines.full").is_file(), "pipelines/full.py does not exist"


def test_rayjob_entrypoint_preset_and_overrides_are_valid(entrypoint):
    from rgm_ray.pipeline.presets import load_preset

    preset = load_preset(option_values(entrypoint, "--preset")[0], option_values(entrypoint, "--set"))
    assert preset["data"]["dataset"] == "cifar10"
    assert preset["data"]["root"].startswith("/")


# --- cluster/README.md ------------------------------------------------------------------------


def test_readme_pipeline_modules_exist(readme_commands):
    modules = {module_of(argv) for argv in readme_commands}
    assert STAGE_MODULES <= modules, f"cluster/README.md does not show {sorted(STAGE_MODULES - modules)}"
    missing = sorted(str(module_file(m).relative_to(REPO)) for m in modules if not module_file(m).is_file())
    assert not missing, f"cluster/README.md runs modules that do not exist: {missing}"


def test_readme_runtime_env_json_parses():
    values = [json.loads(value) for argv in shell_commands(readme_shell())
              for value in option_values(argv, "--runtime-env-json")]
    assert values and all("MLFLOW_TRACKING_URI" in value["env_vars"] for value in values)


def test_readme_image_installs_the_tested_torch_pair():
    """The image cluster/README.md says to bake: the cluster's Ray, the pins the local install is tested with."""
    dockerfiles = re.findall(r"```dockerfile\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(dockerfiles) == 1
    assert dockerfiles[0].startswith(f"FROM rayproject/ray:{ray.__version__}-")
    assert all(pin in dockerfiles[0].split() for pin in makefile_torch_pins())


def test_every_documented_command_runs_locally_or_needs_the_cloud():
    """What test_cluster_job.py (slow) relies on, checked here too: each cluster value it replaces is still in
    the docs, nothing of the cluster is left after, and it knows how to run (or skip) every command."""
    text = localize(docs_text(), local_values("/tmp/run", "/tmp/home", "http://127.0.0.1:8266", 5001))
    assert "/mnt/shared" not in text and "HEAD" not in text
    kinds = [command_kind(argv) for argv in shell_commands(text)]
    assert set(kinds) == {"setup", "service", "job", "cloud"}


def test_readme_files_exist():
    for name in set(re.findall(r"cluster/[\w.-]+", README.read_text())):
        assert (REPO / name).is_file(), name


# --- every documented command uses flags its module accepts ----------------------------------


def module_help(module: str, capsys, monkeypatch) -> str:
    """``python -m module --help`` in-process (the modules are thin argparse wrappers)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), f"{module} --help failed: {captured.err.strip()}"
    return captured.out


def documented_commands() -> list[list[str]]:
    return pipeline_commands(readme_shell()) + pipeline_commands(load_yaml(RAYJOB)["spec"]["entrypoint"])


@pytest.mark.parametrize("module", sorted({module_of(argv) for argv in documented_commands()}))
def test_documented_flags_are_accepted(module, capsys, monkeypatch):
    commands = [argv for argv in documented_commands() if module_of(argv) == module]
    assert module_file(module).is_file(), f"{module_file(module).relative_to(REPO)} does not exist"
    help_text = module_help(module, capsys, monkeypatch)
    for argv in commands:
        for flag in long_flags(argv):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                f"{module} --help does not list {flag} (used in: {shlex.join(argv)})")
