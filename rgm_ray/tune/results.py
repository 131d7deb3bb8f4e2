"""Sweep results: per-configuration mean ± std and 95 % t-intervals across seeds, selection on
validation accuracy, paired differences against a reference source, as CSV and Markdown.

Pure functions on trial rows (dicts with ``labels, source, sl_weight, seed, status, val_acc,
test_acc``), so the tables can be rebuilt from any list of trials, with or without Ray.

* Intervals are Student-t: ``mean ± t_{0.975, n-1} · s / sqrt(n)`` over the seeds (n >= 2).
* **Selection uses validation accuracy only**: per (labels, source) the SL weight with the best mean
  validation accuracy; the overall best configuration likewise. Test accuracy is only reported.
* Paired differences: runs with the same (labels, SL weight, seed) share their labelled subset,
  initial weights and labelled batch order, so ``test(source) - test(reference)`` per seed has far
  less variance than the two means; its t-interval is the honest answer to "does resampling help?".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from rgm_ray.store.atomic import atomic_write_bytes

COMPLETED = "completed"
STOPPED = "stopped"  # ended early by the scheduler: no test accuracy
ERROR = "error"
CONFIG_KEYS = ("labels", "source", "sl_weight")
METRICS = ("val_acc", "test_acc")
CONFIDENCE = 0.95

TRIALS_CSV = "trials.csv"
SUMMARY_CSV = "summary.csv"
SELECTED_CSV = "selected.csv"
DIFFERENCES_CSV = "differences.csv"
SUMMARY_MD = "summary.md"
DIFFERENCE_COLUMNS = ("labels", "source", "reference", "sl_weight", "reference_sl_weight", "n_pairs", "diff_mean",
                      "diff_std", "diff_ci_low", "diff_ci_high")


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """``(mean, std, ci_low, ci_high)``: sample std (ddof 1) and the Student-t interval; NaN where n is too small."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return mean, std, mean - half, mean + half


def _labels_order(labels: Any) -> tuple[int, float]:
    return (1, math.inf) if labels == "all" else (0, float(labels))


def _config_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in CONFIG_KEYS)


def _ordered_keys(rows: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Distinct (labels, source, w): labels ascending ("all" last), sources in first-seen order, w ascending."""
    rows = list(rows)
    source_rank = {s: i for i, s in reversed(list(enumerate(r["source"] for r in rows)))}
    keys = {_config_key(r) for r in rows}
    return sorted(keys, key=lambda k: (_labels_order(k[0]), source_rank[k[1]], k[2]))


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per (labels, source, sl_weight): ``n`` completed seeds, mean/std/CI of each metric."""
    groups = []
    for key in _ordered_keys(rows):
        members = [r for r in rows if _config_key(r) == key]
        done = [r for r in members if r["status"] == COMPLETED]
        group: dict[str, Any] = dict(zip(CONFIG_KEYS, key))
        group.update(n=len(done), n_incomplete=len(members) - len(done),
                     seeds=" ".join(str(r["seed"]) for r in sorted(done, key=lambda r: r["seed"])))
        for metric in METRICS:
            mean, std, lo, hi = mean_ci([r[metric] for r in done])
            group.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        groups.append(group)
    return groups


def _best(groups: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The group with the highest mean validation accuracy (first one on ties)."""
    best = None
    for g in groups:
        if g["n"] and (best is None or g["val_acc_mean"] > best["val_acc_mean"]):
            best = g
    return best


def best_configuration(groups: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The overall best (labels, source, sl_weight) on mean validation accuracy."""
    return _best(groups)


def select_on_validation(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (labels, source), the group whose SL weight has the best mean validation accuracy."""
    chosen = []
    for labels, source in dict.fromkeys((g["labels"], g["source"]) for g in groups):
        best = _best(g for g in groups if g["labels"] == labels and g["source"] == source)
        if best is not None:
            chosen.append(best)
    return chosen


def _paired(rows: Sequence[dict[str, Any]], a: tuple[Any, ...], b: tuple[Any, ...]) -> dict[str, Any]:
    """Test-accuracy difference config ``a`` minus config ``b`` over the seeds both completed."""
    def by_seed(key: tuple[Any, ...]) -> dict[int, float]:
        return {r["seed"]: r["test_acc"] for r in rows if _config_key(r) == key and r["status"] == COMPLETED}

    ta, tb = by_seed(a), by_seed(b)
    seeds = sorted(set(ta) & set(tb))
    mean, std, lo, hi = mean_ci([ta[s] - tb[s] for s in seeds])
    return {"n_pairs": len(seeds), "diff_mean": mean, "diff_std": std, "diff_ci_low": lo, "diff_ci_high": hi}


def paired_differences(rows: Sequence[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """For every (labels, sl_weight) the reference was run at: each other source minus the reference, per seed."""
    out = []
    for labels, source, w in _ordered_keys(rows):
        if source == reference or (labels, reference, w) not in {_config_key(r) for r in rows}:
            continue
        diff = _paired(rows, (labels, source, w), (labels, reference, w))
        out.append({"labels": labels, "source": source, "reference": reference, "sl_weight": w,
                    "reference_sl_weight": w, **diff})
    return out


NO_UNLABELLED = "none"  # the source name of the labelled-only runs (its SL weight is irrelevant: 0)
PLAIN, RESAMPLED = "plain", "resampled"


def _plain_counterpart(source: str) -> str | None:
    """``plain`` for ``resampled``, ``vae_plain`` for ``vae_resampled``; None for any other name."""
    if source == RESAMPLED:
        return PLAIN
    return source[: -len(RESAMPLED)] + PLAIN if source.endswith("_" + RESAMPLED) else None


def thesis_contrasts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The two differences the thesis asks about, paired by (labels, seed): every resampled source minus its
    plain counterpart at the same SL weight, and every source minus the labelled-only runs (``none``, whose
    one SL weight is paired with every other)."""
    keys = {_config_key(r) for r in rows}
    out = []
    for labels, source, w in _ordered_keys(rows):
        plain = _plain_counterpart(source)
        references = [(plain, w)] if plain and (labels, plain, w) in keys else []
        if source != NO_UNLABELLED:
            references += [(NO_UNLABELLED, w_none) for lab, src, w_none in sorted(keys, key=str)
                           if lab == labels and src == NO_UNLABELLED]
        for reference, w_ref in references:
            out.append({"labels": labels, "source": source, "reference": reference, "sl_weight": w,
                        "reference_sl_weight": w_ref, **_paired(rows, (labels, source, w), (labels, reference, w_ref))})
    return out


def selected_differences(rows: Sequence[dict[str, Any]], selected: Sequence[dict[str, Any]],
                         reference: str) -> list[dict[str, Any]]:
    """Each selected configuration minus the reference's selected one at the same label count, paired by seed."""
    ref = {g["labels"]: _config_key(g) for g in selected if g["source"] == reference}
    out = []
    for g in selected:
        if g["source"] != reference and g["labels"] in ref:
            out.append({**dict(zip(CONFIG_KEYS, _config_key(g))), "reference": reference,
                        "reference_sl_weight": ref[g["labels"]][2], **_paired(rows, _config_key(g), ref[g["labels"]])})
    return out


# ---------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text with a header (default: every key, in first-seen order); NaN and None become empty cells."""
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_csv_escape(_cell(row.get(c))) for c in columns))
    return "\n".join(lines) + "\n"


def _csv_escape(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _pm(mean: float, std: float) -> str:
    return _pct(mean) if std is None or math.isnan(std) else f"{_pct(mean)} ± {_pct(std)}"


def _ci(lo: float, hi: float) -> str:
    return "–" if math.isnan(lo) else f"[{_pct(lo)}, {_pct(hi)}]"


def _w(w: float) -> str:
    return f"{w:g}"


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def to_markdown(title: str, groups: Sequence[dict[str, Any]], selected: Sequence[dict[str, Any]],
                best: dict[str, Any] | None, differences: Sequence[dict[str, Any]] = (),
                selected_diffs: Sequence[dict[str, Any]] = (), reference: str | None = None) -> str:
    """The Markdown report of a sweep (accuracies in %, mean ± std over seeds, 95 % t-intervals)."""
    lines = [f"# {title}", "",
             "Accuracies in %, mean ± std over seeds; CI = 95 % Student-t interval of the mean. "
             "Configurations are chosen on validation accuracy only; test accuracy is reported, never used.", ""]
    if best is not None:
        lines += [f"**Best configuration (validation):** labels={best['labels']}, source={best['source']}, "
                  f"w={_w(best['sl_weight'])}: val {_pm(best['val_acc_mean'], best['val_acc_std'])}, "
                  f"test {_pm(best['test_acc_mean'], best['test_acc_std'])} "
                  f"(CI {_ci(best['test_acc_ci_low'], best['test_acc_ci_high'])}, n={best['n']})", ""]
    diff_by_key = {(d["labels"], d["source"]): d for d in selected_diffs}
    sel_header = ["labels", "source", "w (on val)", "n", "val acc", "test acc", "test 95 % CI"]
    if reference:
        sel_header += [f"Δ test vs {reference} (paired)", "Δ 95 % CI"]
    body = []
    for g in selected:
        row = [str(g["labels"]), g["source"], _w(g["sl_weight"]), str(g["n"]), _pm(g["val_acc_mean"], g["val_acc_std"]),
               _pm(g["test_acc_mean"], g["test_acc_std"]), _ci(g["test_acc_ci_low"], g["test_acc_ci_high"])]
        if reference:
            d = diff_by_key.get((g["labels"], g["source"]))
            row += ["" if d is None else f"{_pm(d['diff_mean'], d['diff_std'])} (n={d['n_pairs']})",
                    "" if d is None else _ci(d["diff_ci_low"], d["diff_ci_high"])]
        body.append(row)
    lines += ["## Selected on validation: best SL weight per label count and source", ""]
    lines += _table(sel_header, body) + [""]
    lines += ["## Every configuration", ""]
    lines += _table(["labels", "source", "w", "n", "val acc", "val 95 % CI", "test acc", "test 95 % CI"],
                    ([str(g["labels"]), g["source"], _w(g["sl_weight"]),
                      str(g["n"]) + (f" (+{g['n_incomplete']} incomplete)" if g["n_incomplete"] else ""),
                      _pm(g["val_acc_mean"], g["val_acc_std"]), _ci(g["val_acc_ci_low"], g["val_acc_ci_high"]),
                      _pm(g["test_acc_mean"], g["test_acc_std"]), _ci(g["test_acc_ci_low"], g["test_acc_ci_high"])]
                     for g in groups)) + [""]
    if differences:
        lines += ["## Paired test-accuracy differences (same labels and seed)", ""]
        lines += _table(["labels", "difference", "w", "pairs", "Δ test", "Δ 95 % CI", "distinguishable from 0?"],
                        ([str(d["labels"]), f"{d['source']} − {d['reference']}", _w(d["sl_weight"]),
                          str(d["n_pairs"]), _pm(d["diff_mean"], d["diff_std"]),
                          _ci(d["diff_ci_low"], d["diff_ci_high"]), verdict(d)] for d in differences)) + [""]
    return "\n".join(lines)


def write_results(out: str | Path, rows: Sequence[dict[str, Any]], *, title: str,
                  reference: str | None = None) -> dict[str, Any]:
    """Write trials/summary/selected(/differences) CSVs and ``summary.md`` into ``out``; return the tables."""
    out = Path(out)
    groups = summarize(rows)
    selected = select_on_validation(groups)
    best = best_configuration(groups)
    differences = _unique(paired_differences(rows, reference) if reference else [], thesis_contrasts(rows))
    selected_diffs = selected_differences(rows, selected, reference) if reference else []
    files = {TRIALS_CSV: to_csv(rows), SUMMARY_CSV: to_csv(groups),
             SELECTED_CSV: to_csv([{**g, **_diff_columns(selected_diffs, g)} for g in selected])}
    if differences:
        files[DIFFERENCES_CSV] = to_csv(differences, DIFFERENCE_COLUMNS)
    # summary.md last: its presence is what marks the sweep finished
    files[SUMMARY_MD] = to_markdown(title, groups, selected, best, differences, selected_diffs, reference)
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    return {"groups": groups, "selected": selected, "best": best, "differences": differences,
            "selected_differences": selected_diffs, "files": {name: str(out / name) for name in files}}


def verdict(difference: dict[str, Any]) -> str:
    """Whether a paired difference's 95 % interval excludes zero, in words."""
    lo, hi = (float(difference[k]) if difference[k] not in (None, "") else math.nan
              for k in ("diff_ci_low", "diff_ci_high"))
    if math.isnan(lo) or math.isnan(hi):
        return "cannot tell (fewer than 2 pairs)"
    if lo > 0:
        return "yes: higher"
    if hi < 0:
        return "yes: lower"
    return "no: the interval contains 0"


def _unique(*parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The differences of ``parts`` in order, each comparison once."""
    seen, out = set(), []
    for d in (d for part in parts for d in part):
        key = (d["labels"], d["source"], d["reference"], d["sl_weight"], d["reference_sl_weight"])
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _diff_columns(selected_diffs: Sequence[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    for d in selected_diffs:
        if (d["labels"], d["source"]) == (group["labels"], group["source"]):
            return {k: d[k] for k in ("reference", "reference_sl_weight", "n_pairs", "diff_mean", "diff_ci_low",
                                      "diff_ci_high")}
    return {}
