"""``rgm report RUN_DIR``: the thesis's tables and figures, rebuilt from a pipeline run directory.

Sections follow the thesis: Table 6.1 (generators: size, training and sampling cost), 6.2 (weight
estimator accuracy and calibration), 6.3 (IS/FID/KID plain vs resampled vs reference), 6.4 (SSL
accuracy with confidence intervals) and Figures 6.1-6.5 (grids, calibration curves, weight
distributions) plus ESS vs alpha. A stage that has not run is reported as missing, never invented.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rgm_ray.audit.outputs import AUDIT_JSON, CLASS_BARS_PNG, HEADER as AUDIT_HEADER, table as audit_table
from rgm_ray.models.checkpoint import read_checkpoint_config
from rgm_ray.models.domain import KEY_TEST_ACCURACY
from rgm_ray.models.gan_training import KEY_FID
from rgm_ray.models.registry import GENERATOR_NAMES, get_family
from rgm_ray.resample.config import METHODS
from rgm_ray.report.document import Figure, Section, Table, to_html, to_markdown
from rgm_ray.store.atomic import atomic_write_bytes
from rgm_ray.tune.results import DIFFERENCES_CSV, SUMMARY_CSV, SUMMARY_MD, verdict
from rgm_ray.weigh.variants import weigh_variants

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
STATE_FILE = "pipeline.json"
NAMES = {name: get_family(name).display_name for name in GENERATOR_NAMES}  # in pipeline order


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _generators(outputs: dict[str, Any]) -> list[str]:
    return [g for g in NAMES if f"train_{g}" in outputs]


def _domain_net(outputs: dict[str, Any]) -> str:
    """This run's domain network and its test accuracy. The pipeline computes every domain-feature number
    (weigh's domain backbone, evaluate's IS/FID/KID, the audit) in its domain stage's network, so each
    table of them says how good that feature space is."""
    accuracy = (outputs.get("domain") or {}).get(KEY_TEST_ACCURACY)
    return "the domain ResNet, " + ("test accuracy not recorded" if accuracy is None
                                    else f"{100 * accuracy:.1f} % test accuracy")


def _features(outputs: dict[str, Any], extractor: dict[str, Any]) -> str:
    """The feature space of an evaluation's ``metrics.json`` extractor, with the domain network's accuracy."""
    return f"the features of {_domain_net(outputs)}" if extractor.get("kind") == "domain" else "Inception-V3 features"


def _fid_features(outputs: dict[str, Any], g: str) -> str:
    """Whose features generator ``g``'s training FID is in: this run's domain network, or (a committed
    GAN, a preset's own ``fid_domain_checkpoint``) another one."""
    train = outputs[f"train_{g}"]
    used = (read_checkpoint_config(train["checkpoint"]).get("train_config") or {}).get("fid_domain_checkpoint")
    if used == (outputs.get("domain") or {}).get("out"):
        return f"The {NAMES[g]}'s FID is in the features of {_domain_net(outputs)}."
    return (f"The {NAMES[g]}'s FID is in the features of another domain network ({used}), not this run's; a committed "
            "checkpoint's TRAINING.md gives its accuracy.")


def section_models(outputs: dict[str, Any]) -> Section:
    """Table 6.1: model size, training cost and measured sampling cost per 250 samples."""
    rows = []
    for g in _generators(outputs):
        train = outputs[f"train_{g}"]
        gen = outputs.get(f"generate_{g}", {})
        per_worker = [v for k, v in gen.items() if k.startswith("worker_") and k.endswith("_samples_per_sec")]
        rate = sum(per_worker) / len(per_worker) if per_worker else None
        rows.append([NAMES[g], _fmt(train.get("parameters")), _fmt(train.get("steps")),
                     _fmt(train.get("train_seconds") and train["train_seconds"] / 60),
                     _fmt(train.get("test_bpd")), _fmt(train.get(KEY_FID)),
                     _fmt(rate and 250 / rate / 60), _fmt(gen.get("samples_per_sec")), train.get("origin", "")])
    section = Section("Generators (Table 6.1)")
    if rows:
        section.tables.append(Table(
            ["model", "parameters", "training steps", "training minutes", "test bits/dim", "test FID (domain)",
             "minutes per 250 samples (one worker)", "samples/s (all workers)", "checkpoint"], rows,
            "Measured on this run's hardware. VAE bits/dim is the negative ELBO (an upper bound). A GAN has no "
            "likelihood: its quality number is the domain-feature FID of its samples against the test split, "
            "logged by its trainer. "
            + " ".join(_fid_features(outputs, g) for g in _generators(outputs)
                       if outputs[f"train_{g}"].get(KEY_FID) is not None)))
        for g in _generators(outputs):
            grid = Path(outputs[f"train_{g}"]["run"]) / "samples.png"
            if grid.is_file():
                section.figures.append(Figure(grid, f"{NAMES[g]} samples (Figure 6.1 analogue)"))
    else:
        section.paragraphs.append("The generator stages have not run.")
    return section


def _mean_std(row: dict[str, Any], key: str) -> str:
    """A metric cell of an evaluation row: its mean ± std over the runs."""
    return f"{_fmt(row['mean'][key])} ± {_fmt(row['std'][key], 2)}"


def section_evaluation(outputs: dict[str, Any]) -> Section:
    """Table 6.3: IS / FID / KID (+ precision/recall) of reference, plain and resampled sets."""
    section = Section("Sample quality (Table 6.3)")
    evaluation = outputs.get("evaluate")
    if not evaluation:
        section.paragraphs.append("The evaluate stage has not run.")
        return section
    out = Path(evaluation["out"])
    metrics = json.loads((out / "metrics.json").read_text())
    extractor = metrics["extractor"]
    keys = metrics["metrics"]
    rows = [[row["name"], *(_mean_std(row, k) for k in keys)] for row in metrics["rows"]]
    arrows = {"is": "IS ↑", "fid": "FID ↓", "kid": "KID ↓", "precision": "precision ↑", "recall": "recall ↑"}
    comparable = extractor.get("comparable_to_inception_numbers", False)
    caption = (f"{metrics['runs']} runs of k = {metrics['k']} images per set, mean ± std. Features: "
               f"{extractor.get('description', extractor.get('kind'))}"
               + (f" ({_domain_net(outputs)}). " if extractor.get("kind") == "domain" else ". ")
               + ("Inception-V3 numbers, comparable to the literature." if comparable else
                  "These are domain-feature numbers, NOT Inception-V3 numbers: compare rows with each other, "
                  "not with published IS/FID/KID."))
    section.tables.append(Table(["set", *(arrows.get(k, k) for k in keys)], rows, caption))
    for png in sorted(out.glob("grid_*.png")):
        section.figures.append(Figure(png, png.stem.removeprefix("grid_").replace("_", " ")))
    return section


def section_weights(outputs: dict[str, Any]) -> Section:
    """Table 6.2 (estimator accuracy and calibration) and Figures 6.2-6.5 (reliability, weights, ESS)."""
    section = Section("Importance weights (Table 6.2)")
    rows, figures, backbones = [], [], set()
    variants = weigh_variants(_generators(outputs))
    for variant in variants:
        weigh = outputs.get(f"weigh_{variant.name}")
        if not weigh:
            continue
        out = Path(weigh["out"])
        calibration = json.loads((out / "calibration.json").read_text())
        summary = json.loads((out / "weights_summary.json").read_text())
        before, after = calibration["pooled"]["before"], calibration["pooled"]["after"]
        temperatures = ", ".join(f"{t:.2f}" for t in calibration.get("temperatures", []))
        backbones.add(calibration["backbone"]["kind"])
        rows.append([variant.label, calibration["backbone"]["kind"], _fmt(before["accuracy"]), _fmt(before["roc_auc"]),
                     f"{_fmt(before['ece'], 2)} → {_fmt(after['ece'], 2)}",
                     f"{_fmt(before['brier'], 2)} → {_fmt(after['brier'], 2)}", temperatures or "–",
                     _fmt(summary["ess"]), _fmt(summary["ess_frac"]), _fmt(summary["max_share"]),
                     ", ".join(f"{a}: {_fmt(summary[f'ess_alpha_{a}'])}" for a in ("0.25", "0.5", "0.75"))])
        for png, caption in (("reliability.png", "reliability diagram (held-out folds)"),
                             ("log_weight_hist.png", "log-weight distribution"),
                             ("ess_vs_alpha.png", "effective sample size vs flattening α")):
            if (out / png).is_file():
                figures.append(Figure(out / png, f"{variant.label}: {caption}"))
    if not rows:
        section.paragraphs.append("The weigh stage has not run.")
        return section
    section.tables.append(Table(
        ["generator", "backbone", "accuracy", "ROC-AUC", "ECE before → after", "Brier before → after",
         "temperature per fold", "ESS (α=1)", "ESS/N", "largest normalised weight", "ESS at α"], rows,
        "Real-vs-generated classifier measured on held-out cross-fitting folds; every sample's weight "
        "comes from the fold model that never saw it. Accuracy and ROC-AUC are before temperature scaling "
        "(scaling does not change them)."
        + (f" Backbone 'domain': {_domain_net(outputs)}." if "domain" in backbones else "")
        + (" A GAN's own-discriminator row scores with the GAN's trained discriminator (no classifier is "
           "fitted; only its temperature, per fold)." if any(v.backbone for v in variants) else "")))
    section.figures = figures
    summaries = [(v, r) for v in variants if (r := outputs.get(f"resample_{v.name}"))]
    resampled = [[v.label, _fmt(r.get("k")), f"{_fmt(r.get('alpha'))} ({r.get('alpha_source', 'given')})",
                  _fmt(r.get("ess_alpha_one")), _fmt(r.get("ess_before")), _fmt(r.get("ess_after")),
                  _fmt(r.get("unique"))] for v, r in summaries]
    if resampled:
        section.tables.append(Table(
            ["generator", "k", "α (how chosen)", "ESS at α = 1", "ESS before transform", "ESS after",
             "unique selected"], resampled,
            "Gumbel top-k resampling (without replacement unless stated). Unless α is given, it is the largest "
            "α whose ESS reaches the target (k, capped at half the samples), so a few heavy weights cannot "
            "fill the draw."))
        section.paragraphs += [f"Warning ({v.label}): {r['warning']}" for v, r in summaries if r.get("warning")]
    return section


def section_methods(outputs: dict[str, Any]) -> Section:
    """SIR, rejection and independence Metropolis-Hastings on the same weights, evaluated side by side."""
    section = Section("Resamplers compared")
    evaluation = outputs.get("evaluate_methods")
    if not evaluation:
        section.paragraphs.append("The resampler comparison has not run (preset `pipeline.compare_methods`).")
        return section
    metrics = json.loads((Path(evaluation["out"]) / "metrics.json").read_text())
    by_set = {row["name"]: row for row in metrics["rows"]}
    keys = [k for k in ("fid", "kid", "is") if k in metrics["metrics"]]
    rows = []
    for variant in weigh_variants(_generators(outputs)):
        stages = [f"resample_{variant.name}", *(f"resample_{variant.name}_{m}" for m in METHODS)]
        for r in (outputs[name] for name in stages if name in outputs):
            row = by_set.get(f"{variant.name}_{r['method']}")
            accept = r.get("acceptance_rate")
            rows.append([variant.label, r["method"], _fmt(r.get("alpha")), _fmt(r.get("ess_after")),
                         "–" if accept is None else f"{_fmt(accept)}"
                         + (f" ({_fmt(r['proposals_per_accepted'])} proposals each, M = "
                            + ("max w" if r.get("rejection_exact") else f"{r['rejection_quantile']}-quantile")
                            + ")" if r.get("proposals_per_accepted") else ""),
                         _fmt(r.get("unique")), _fmt(r.get("max_copies")), _fmt(r.get("draws")),
                         _fmt(r.get("wall_seconds"), 2),
                         *((_mean_std(row, k) if row else "–") for k in keys)])
    arrows = {"is": "IS ↑", "fid": "FID ↓", "kid": "KID ↓"}
    section.tables.append(Table(
        ["generator", "method", "α", "ESS", "acceptance", "distinct", "most copies", "draws", "seconds",
         *(arrows[k] for k in keys)],
        rows,
        f"The same log-weights and α per generator. sir: Gumbel top-k without replacement; rejection: accept "
        f"with probability min(1, w/M), the first k accepted in a seeded proposal order (M = max w is exact; "
        f"M = a quantile of w, as in discriminator rejection sampling, draws from min(w, M) instead); mh: an independence "
        f"Metropolis-Hastings chain over the generated samples as proposals (acceptance = moves taken). "
        f"{metrics['runs']} runs of k = {metrics['k']} images per set (the size every method reached), "
        f"mean ± std, in {_features(outputs, metrics['extractor'])}. An independence chain that meets a heavy "
        f"weight stays on it (most copies), which costs diversity where a few weights dominate."))
    return section


def section_ssl(outputs: dict[str, Any]) -> Section:
    """Table 6.4: semi-supervised test accuracy by labels and unlabelled source, with 95 % CIs."""
    section = Section("Semi-supervised classification (Table 6.4)")
    ssl = outputs.get("ssl")
    if not ssl or not (Path(ssl["out"]) / SUMMARY_MD).is_file():
        section.paragraphs.append("The SSL sweep has not run.")
        return section
    with open(Path(ssl["out"]) / SUMMARY_CSV, newline="") as fh:
        groups = list(csv.DictReader(fh))

    def pct(row: dict[str, str], key: str) -> str:
        return "–" if not row.get(key) else f"{100 * float(row[key]):.2f}"

    rows = [[g["labels"], g["source"], g["sl_weight"], g["n"],
             f"{pct(g, 'test_acc_mean')} ± {pct(g, 'test_acc_std')}",
             f"[{pct(g, 'test_acc_ci_low')}, {pct(g, 'test_acc_ci_high')}]", pct(g, "val_acc_mean")]
            for g in groups]
    section.tables.append(Table(
        ["labels", "unlabelled source", "SL weight", "seeds", "test accuracy % (mean ± std)", "95 % CI",
         "validation accuracy %"], rows,
        "Ray Tune sweep, one MLflow run per trial; configurations are chosen on validation accuracy only. "
        f"Full tables: {Path(ssl['out']) / SUMMARY_MD}."))
    differences = Path(ssl["out"]) / DIFFERENCES_CSV
    if differences.is_file():
        with open(differences, newline="") as fh:
            section.tables.append(_differences_table(list(csv.DictReader(fh))))
    return section


def _differences_table(differences: list[dict[str, str]]) -> Table:
    """Table 6.4's paired differences in percentage points, each with whether its interval excludes zero."""
    def pp(value: str) -> str:
        return "–" if not value else f"{100 * float(value):+.2f}"

    rows = [[d["labels"], f"{d['source']} − {d['reference']}", d["sl_weight"], d["n_pairs"],
             f"{pp(d['diff_mean'])} ± {pp(d['diff_std']).lstrip('+')}", f"[{pp(d['diff_ci_low'])}, {pp(d['diff_ci_high'])}]",
             verdict(d)] for d in differences]
    return Table(["labels", "difference", "SL weight", "pairs", "Δ test accuracy, points (mean ± std)", "95 % CI",
                  "distinguishable from 0?"], rows,
                 "Paired by seed: runs with the same labels and seed share their labelled subset, initial weights and "
                 "batch order, so the per-seed difference is far less noisy than the two means. 'No' means this "
                 "sweep cannot tell the difference from zero, not that there is none.")


def section_audit(outputs: dict[str, Any]) -> Section:
    """How the sets differ from the data: class balance, memorisation, diversity (``rgm audit``)."""
    section = Section("Bias, memorisation and diversity")
    audited = outputs.get("audit")
    if not audited:
        section.paragraphs.append("The audit stage has not run.")
        return section
    out = Path(audited["out"])
    caption, rows, changes = audit_table(json.loads((out / AUDIT_JSON).read_text()))
    section.tables.append(Table(list(AUDIT_HEADER), rows, f"{caption} Feature space: {_domain_net(outputs)}."))
    if changes:
        section.paragraphs.append("Change in near-copy fraction (resampled − plain, 95 % interval): "
                                  + " ".join(line.removeprefix("- ") + "." for line in changes))
    for png in (out / CLASS_BARS_PNG, *sorted(out.glob("neighbours_*.png"))):
        if png.is_file():
            caption = ("predicted-class shares of every set and of the real test split" if png.name == CLASS_BARS_PNG
                       else f"{png.stem.removeprefix('neighbours_')}: top-weighted samples beside their 3 nearest "
                            "training images")
            section.figures.append(Figure(png, caption))
    return section


SECTIONS = (section_models, section_weights, section_evaluation, section_audit, section_methods, section_ssl)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    """The preset, stages, outputs and timings the last run recorded in ``run_dir`` (empty for a new
    directory); a damaged file is refused, naming it, rather than half-read."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable ({exc}); move it away to start the run afresh") from exc
    if not isinstance(state, dict) or not isinstance(state.get("preset"), str):
        raise ValueError(f"{path}: not a pipeline state file (no 'preset'); move it away to start afresh")
    for key, kind in (("outputs", dict), ("seconds", dict), ("stages", list)):
        if not isinstance(state.setdefault(key, kind()), kind):
            raise ValueError(f"{path}: field {key!r} must be a JSON {'object' if kind is dict else 'array'}")
    return state


def build_report(run_dir: str | Path, *, outputs: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``run_dir`` from its ``pipeline.json``
    (or from ``outputs`` when the pipeline passes its in-memory state)."""
    run_dir = Path(run_dir)
    state = load_state(run_dir)
    if not state:
        raise FileNotFoundError(f"{run_dir / STATE_FILE}: missing; {run_dir} is not a pipeline run directory "
                                "('rgm pipeline' / 'rgm demo' write it)")
    outputs = outputs if outputs is not None else state["outputs"]
    sections = [build(outputs) for build in SECTIONS]
    seconds = state.get("seconds", {})
    timing = ", ".join(f"{k} {seconds[k]:.0f} s" for k in state.get("stages", seconds) if k in seconds)
    total = sum(seconds.values())
    sections.insert(0, Section("Run", [f"Preset '{state['preset']}', run directory {run_dir}.",
                                       f"Wall time spent per stage (over all runs of this directory, "
                                       f"{total / 60:.1f} min in total): {timing}."]))
    title = f"rgm_ray report — {state['preset']}"
    md, page = run_dir / REPORT_MD, run_dir / REPORT_HTML
    atomic_write_bytes(md, to_markdown(title, sections, run_dir).encode())
    atomic_write_bytes(page, to_html(title, sections).encode())
    return md, page
