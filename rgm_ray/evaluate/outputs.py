"""What ``rgm evaluate`` leaves in ``--out``: metrics.json, table.md and sample grids; MLflow metric names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rgm_ray.evaluate.protocol import EvalSet, Evaluation
from rgm_ray.evaluate.tables import markdown_table
from rgm_ray.store import atomic_path, atomic_write_json
from rgm_ray.viz import save_image_grid

METRICS_JSON = "metrics.json"
KEY_INPUTS = "inputs"  # in metrics.json: what the numbers were computed from (the completeness check)
TABLE_MD = "table.md"
GRID_SIZE = 64


def grid_file(name: str, suffix: str = "") -> str:
    """``grid_<name>[_<suffix>].png``; the real images are ``grid_real.png``."""
    return f"grid_{name}{'_' + suffix if suffix else ''}.png"


def top_bottom_rows(log_weight: np.ndarray, n: int = GRID_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``n`` highest-weighted (descending) and ``n`` lowest-weighted (ascending) images."""
    order = np.argsort(np.asarray(log_weight), kind="stable")
    return order[::-1][:n], order[:n]


def mlflow_metrics(evaluation: Evaluation) -> dict[str, float]:
    """``<row>/<key>_mean`` and ``<row>/<key>_std`` for every row and metric key."""
    out: dict[str, float] = {}
    for row in evaluation.rows:
        for stat, values in (("mean", row.mean()), ("std", row.std())):
            out.update({f"{row.name}/{key}_{stat}": value for key, value in values.items()})
    return out


def mlflow_run_metrics(evaluation: Evaluation, run: int) -> dict[str, float]:
    """``<row>/<key>`` of one run (logged with ``step=run``)."""
    return {f"{row.name}/{key}": value for row in evaluation.rows for key, value in row.runs[run].items()}


def write_outputs(out: str | Path, evaluation: Evaluation, real: EvalSet, sets: Sequence[EvalSet], *,
                  inputs: dict[str, Any] | None = None) -> list[Path]:
    """Write table.md, the grids (first run's images; top/bottom 64 by weight) and, last, metrics.json
    (whose presence marks the evaluation finished; ``inputs``, what it was computed from, goes in it)."""
    out = Path(out)
    with atomic_path(out / TABLE_MD) as tmp:
        tmp.write_text(markdown_table(evaluation))
    written = [out / TABLE_MD]
    written.append(save_image_grid(real.images[evaluation.real_rows[0][:GRID_SIZE]], out / grid_file("real")))
    for s in sets:
        written.append(save_image_grid(s.images[evaluation.set_rows[s.name][0][:GRID_SIZE]], out / grid_file(s.name)))
        if s.log_weight is not None:
            top, bottom = top_bottom_rows(s.log_weight)
            written.append(save_image_grid(s.images[top], out / grid_file(s.name, f"top{GRID_SIZE}")))
            written.append(save_image_grid(s.images[bottom], out / grid_file(s.name, f"bottom{GRID_SIZE}")))
    atomic_write_json(out / METRICS_JSON, {**evaluation.to_json(), **({KEY_INPUTS: inputs} if inputs else {})})
    return [out / METRICS_JSON, *written]
