"""The Markdown table in the shape of the thesis's Table 6.3: reference row first, "mean ± std" cells."""

from __future__ import annotations

from rgm_ray.evaluate.metrics import KEY_FID, KEY_IS, KEY_KID, KEY_PRECISION, KEY_RECALL
from rgm_ray.evaluate.protocol import Evaluation
from rgm_ray.evaluate.weighted_fid import KEY_WEIGHTED_FID, KEY_WEIGHTED_FID_ESS

# (key, header, decimals)
COLUMNS = ((KEY_IS, "IS ↑", 2), (KEY_FID, "FID ↓", 2), (KEY_KID, "KID ↓", 4),
           (KEY_PRECISION, "precision ↑", 3), (KEY_RECALL, "recall ↑", 3))
WEIGHTED_COLUMNS = ((KEY_WEIGHTED_FID, "weighted FID ↓", 2), (KEY_WEIGHTED_FID_ESS, "ESS", 1))


def caption(evaluation: Evaluation) -> str:
    c = evaluation.config
    subsets = "uniform random k-subsets per run" if c.uniform_k else "whole sets of exactly k"
    line = (f"Table: k = {c.k} images per set ({subsets}), mean ± std over {c.runs} run(s), seed {c.seed}; "
            f"real: {evaluation.real_source}. Features: {evaluation.extractor.get('description', 'unknown')}.")
    if not evaluation.extractor.get("comparable_to_inception_numbers", False):
        line += " These are domain-feature numbers, not Inception-V3 numbers: compare them only with each other."
    return line


def markdown_table(evaluation: Evaluation) -> str:
    """Rows: reference, then each set; columns IS, FID, KID, precision, recall (+ weighted FID if any)."""
    columns = list(COLUMNS)
    if any(KEY_WEIGHTED_FID in row.keys for row in evaluation.rows):
        columns += WEIGHTED_COLUMNS
    lines = ["| set | " + " | ".join(header for _, header, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in evaluation.rows:
        mean, std = row.mean(), row.std()
        cells = [f"{mean[key]:.{digits}f} ± {std[key]:.{digits}f}" if key in mean else "–"
                 for key, _, digits in columns]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return caption(evaluation) + "\n\n" + "\n".join(lines) + "\n"
