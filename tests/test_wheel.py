"""Issue 17: a wheel (a non-editable install, as baked into a cluster image) works outside the source tree.

The wheel is built from a copy of the sources (a build writes ``build/`` and ``*.egg-info`` beside
them) and installed without its dependencies into a fresh venv, which gets the project venv's packages
through a ``.pth`` line (a plain path: the project venv's own ``.pth`` files, among them the editable
install's finder, are not run, so ``rgm_ray`` can only come from the wheel). From a directory outside
the source tree the installed ``rgm`` runs, every shipped sweep config loads by name, and the presets
(which name a shipped sweep and the demo checkpoints) and the demo checkpoints load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "rgm_ray", "pipelines", "tune_configs")
PACKAGE_ROOTS = ("rgm_ray", "pipelines")
CHECK = """
import json
import rgm_ray
from rgm_ray.models.checkpoint import load_checkpoint
from rgm_ray.pipeline.presets import ASSETS, PRESETS, load_preset
from rgm_ray.tune.config import load_sweep_config, shipped_config_names, sweep_config_path
names = shipped_config_names()
trials = {name: len(load_sweep_config(name).cells()) for name in names}
for name in PRESETS:
    load_preset(name)
kinds = {d.name: type(load_checkpoint(d / "checkpoint")).__name__ for d in sorted((ASSETS / "demo").iterdir())
         if (d / "checkpoint").is_dir()}
print(json.dumps({"package": rgm_ray.__file__, "names": names, "trials": trials, "kinds": kinds,
                  "paths": [str(sweep_config_path(name)) for name in names]}))
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a copy of its sources."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
          str(src)], cwd=work, env=os.environ.copy())
    [built] = (work / "dist").glob("rgm_ray-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel, with the project venv's packages as its dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "project_venv_deps.pth").write_text("".join(f"{path}\n" for path in sorted(deps)))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=venv.parent, env=os.environ.copy())
    return venv


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user of the installed package: nothing pointing at the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_wheel_holds_every_module_config_and_asset(wheel) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for root in PACKAGE_ROOTS:
        for path in (ROOT / root).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT).as_posix()
                assert relative in names, f"{relative} is missing from the wheel (setup.py / package-data?)"
    for config in (ROOT / "tune_configs").glob("*.yaml"):
        assert f"rgm_ray/tune_configs/{config.name}" in names


def test_installed_wheel_runs_outside_the_source_tree(venv, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(venv)
    assert "usage: rgm" in _run([str(venv / "bin" / "rgm"), "--help"], cwd=elsewhere, env=env)
    check = json.loads(_run([str(venv / "bin" / "rgm"), "tune", "--config", "ssl_smoke", "--check", "--json"],
                            cwd=elsewhere, env=env))
    assert check["sweep"] == "ssl_smoke" and check["trials"] == len(check["cells"]) > 0

    found = json.loads(_run([str(venv / "bin" / "python"), "-c", CHECK], cwd=elsewhere, env=env))
    assert Path(found["package"]).is_relative_to(venv), f"rgm_ray imported from {found['package']}, not the wheel"
    assert found["names"] == sorted(p.stem for p in (ROOT / "tune_configs").glob("*.yaml"))
    assert all(Path(path).is_relative_to(venv) for path in found["paths"])
    assert all(n > 0 for n in found["trials"].values())
    committed = sorted(d.name for d in (ROOT / "rgm_ray" / "assets" / "demo").iterdir() if (d / "checkpoint").is_dir())
    assert sorted(found["kinds"]) == committed
