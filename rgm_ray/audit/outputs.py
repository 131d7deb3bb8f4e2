"""What ``rgm audit`` leaves in ``--out``: audit.json (last), table.md and the figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from rgm_ray.audit.neighbours import nearest_neighbours, pixel_vectors
from rgm_ray.evaluate.outputs import top_bottom_rows
from rgm_ray.evaluate.protocol import EvalSet
from rgm_ray.store import atomic_path, atomic_write_json
from rgm_ray.viz import save_grouped_bars, save_histogram, save_image_grid

if TYPE_CHECKING:
    from rgm_ray.audit.stage import AuditConfig, Bank

AUDIT_JSON = "audit.json"
KEY_INPUTS = "inputs"  # in audit.json: what the numbers were computed from (the completeness check)
TABLE_MD = "table.md"
CLASS_BARS_PNG = "class_balance.png"
SPACES = ("pixel", "feature")


def nn_histogram_file(space: str) -> str:
    """``nn_pixel.png`` / ``nn_feature.png``: every row's nearest-train distances, overlaid."""
    return f"nn_{space}.png"


def neighbours_file(name: str) -> str:
    """``neighbours_<set>.png``: the set's top-weighted (or first) samples, each beside its nearest train images."""
    return f"neighbours_{name}.png"


def _ci(value: float, ci: Sequence[float], digits: int) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _support(birthday: dict[str, Any]) -> str:
    fmt = lambda n: "∞" if n is None else f"{n:.3g}"  # noqa: E731
    lo, hi = birthday["support_ci"]
    return f"{fmt(birthday['support'])} [{fmt(lo)}, {fmt(hi)}]"


HEADER = ("set", "images", "class TV ↓", "class KL ↓", "near-copy pixel", "near-copy feature", "duplicates",
          "birthday support", "density", "coverage", "precision", "recall")


def table(record: dict[str, Any]) -> tuple[str, list[list[str]], list[str]]:
    """``(caption, rows, near-copy change lines)`` of ``audit.json``: one row per audited set, the
    reference first, 95 % intervals in brackets (``table.md`` and the pipeline report show the same)."""
    t, c = record["thresholds"], record["config"]
    caption = (f"Table: audit against {record['real']} (reference: its test split; bank: {record['bank']['images']} "
               f"train images). Near-copy: nearest-train distance at or below the {t['quantile']:g} quantile of the "
               f"test split's (pixel {t['pixel']:.4g}, feature {t['feature']:.4g}); duplicates use the feature "
               "threshold. Class KL is KL(set ‖ test split) with +0.5 per class count. Birthday batches of "
               f"{c['birthday_batch']} x {c['birthday_batches']}. Seed {c['seed']}, {c['bootstrap']} bootstrap "
               "resamples, 95 % percentile intervals in brackets (a distance is biased upwards under resampling, so "
               "its interval can lie above a small estimate: the reference row's is the noise floor). "
               "Domain-feature numbers: compare them only with each other.")
    rows = []
    for row in record["rows"]:
        b, m, d = row["class_balance"], row["memorisation"], row["diversity"]
        cells = [str(row["images"]), _ci(b["tv"], b["tv_ci"], 3), _ci(b["kl"], b["kl_ci"], 3),
                 _ci(m["pixel"]["near_copy_fraction"], m["pixel"]["near_copy_ci"], 3),
                 _ci(m["feature"]["near_copy_fraction"], m["feature"]["near_copy_ci"], 3),
                 f"{d['duplicate_rate']:.3f}", _support(d["birthday"]),
                 *(f"{d[key]:.3f}" for key in ("density", "coverage", "precision", "recall"))]
        rows.append([row["name"], *cells])
    changes = [f"- {name} vs {change['baseline']}: " + "; ".join(
        f"{space} {change[space]['delta']:+.3f} [{change[space]['ci'][0]:+.3f}, {change[space]['ci'][1]:+.3f}]"
        f"{' (raised)' if change[space]['raised'] else ''}" for space in SPACES)
        for name, change in record["near_copy_change"].items()]
    return caption, rows, changes


def markdown_table(record: dict[str, Any]) -> str:
    """``table.md``: the caption, the table and the near-copy changes."""
    caption, rows, changes = table(record)
    lines = [caption, "", "| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1),
             *("| " + " | ".join(row) + " |" for row in rows)]
    if changes:
        lines += ["", "Change in near-copy fraction:", *changes]
    return "\n".join(lines) + "\n"


def _neighbour_figure(s: EvalSet, bank: "Bank", config: "AuditConfig", path: Path) -> dict[str, Any]:
    """Grid: one line per shown sample, the sample then its ``nn_k`` nearest train images (pixel space)."""
    n = min(config.figure_samples, len(s.images))
    rows = top_bottom_rows(s.log_weight, n)[0] if s.log_weight is not None else np.arange(n)
    distances, indices = nearest_neighbours(pixel_vectors(s.images[rows]), bank.pixels, config.nn_k)
    tiles = np.concatenate([np.concatenate([s.images[r:r + 1], bank.images[idx]]) for r, idx in zip(rows, indices)])
    save_image_grid(tiles, path, nrow=1 + config.nn_k)
    return {"file": path.name, "order": "log_weight, descending" if s.log_weight is not None else "first rows",
            "rows": rows.tolist(), "train_indices": indices.tolist(), "pixel_distances": distances.tolist()}


def write_outputs(out: str | Path, record: dict[str, Any], sets: Sequence[EvalSet], bank: "Bank",
                  config: "AuditConfig", nn_distances: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """table.md, the figures, then audit.json (``record`` plus the figures' index); returns the paths."""
    out = Path(out)
    classes = record["classes"]
    written = [save_grouped_bars(classes, {row["name"]: row["class_balance"]["histogram"] for row in record["rows"]},
                                 out / CLASS_BARS_PNG, ylabel="fraction of images",
                                 title="predicted class (domain classifier)")]
    for space in SPACES:
        written.append(save_histogram({name: d[space] for name, d in nn_distances.items()},
                                      out / nn_histogram_file(space),
                                      xlabel=f"distance to nearest train image ({space})",
                                      title=f"nearest-train distances, {space} space"))
    neighbours = {}
    for s in sets:
        neighbours[s.name] = _neighbour_figure(s, bank, config, out / neighbours_file(s.name))
        written.append(out / neighbours_file(s.name))
    record = {**record, "figures": {"class_balance": CLASS_BARS_PNG,
                                    "nn_distances": {space: nn_histogram_file(space) for space in SPACES},
                                    "neighbours": neighbours}}
    with atomic_path(out / TABLE_MD) as tmp:
        tmp.write_text(markdown_table(record))
    atomic_write_json(out / AUDIT_JSON, record)
    return [out / AUDIT_JSON, out / TABLE_MD, *written]
