"""The README's Python API example runs as written (on the committed demo VAE, scaled as it says)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rgm_ray.store import SampleSet, verify_sample_set

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


def _stage_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API"):readme.index("## Tracking")]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_readme_stage_example_runs(ray_local, tmp_path, monkeypatch, capsys):
    code = _stage_example()
    for name in ("rgm_ray/assets/", "tune_configs/"):  # the example runs from the repo root
        code = code.replace(f'"{name}', f'"{REPO / name}/').replace(f'\'{name}', f"'{REPO / name}/")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "PixelCNN++" in printed and "FID" in printed and "sweep 'ssl_smoke'" in printed
    runs = tmp_path / "runs" / "api"
    for name in ("samples", "weights/weighted", "resampled"):
        assert verify_sample_set(runs / name) == []
    assert len(SampleSet(runs / "resampled")) == 128
    assert (runs / "evaluate" / "metrics.json").is_file() and (runs / "ssl" / "summary.md").is_file()
