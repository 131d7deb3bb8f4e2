"""The evaluate stage's entry point: score sample sets against real data on equal-size subsets.

``rgm evaluate`` and the pipeline both call :func:`evaluate_sets`. Everything is checked before any
network is trained or run (set names, sizes, shapes), the feature extractor is resolved once
(``domain``: the given checkpoint, else one trained or reused under ``OUT/domain``; ``inception``:
a local weights file), and ``metrics.json`` is written last, so its presence marks a finished run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rgm_ray.data import DATASET_NAMES
from rgm_ray.evaluate.features import EXTRACTOR_KINDS, ExtractorSpec, FidelityFeaturizer, domain_spec, inception_spec
from rgm_ray.evaluate.inputs import load_real, load_sample_set
from rgm_ray.evaluate.metrics import KEY_FID
from rgm_ray.evaluate.outputs import (KEY_INPUTS, METRICS_JSON, TABLE_MD, mlflow_metrics, mlflow_run_metrics,
                                     write_outputs)
from rgm_ray.evaluate.protocol import EvalConfig, evaluate, validate_sets
from rgm_ray.models.domain import ensure_domain
from rgm_ray.results import StageResult
from rgm_ray.runtime import autodetect_device, set_torch_threads
from rgm_ray.store.lineage import log_sample_sets
from rgm_ray.store.lock import output_lock
from rgm_ray.store.manifest import manifest_digest
from rgm_ray.tracking import NullTracker, Tracker

DOMAIN_DIR = "domain"


@dataclass(frozen=True)
class EvaluateSpec:
    """Which sets to score against which real data, with which features, into ``out``."""

    real: str  # a dataset name (test split real, train split reference) or a sample-set directory
    sets: dict[str, str]  # row name -> sample-set directory
    out: str
    config: EvalConfig
    root: str | None = None
    features: str = "domain"
    domain_checkpoint: str | None = None  # default: train (or reuse) one under OUT/domain
    inception_weights: str | None = None
    batch_size: int = 512  # feature-extraction batch (no effect on the numbers)
    device: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.features not in EXTRACTOR_KINDS:
            raise ValueError(f"features must be one of {', '.join(EXTRACTOR_KINDS)}, got {self.features!r}")
        if self.features == "inception" and self.domain_checkpoint:
            raise ValueError("--domain-checkpoint only applies to --features domain")
        if self.features == "domain" and self.inception_weights:
            raise ValueError("--inception-weights only applies to --features inception")
        if not self.sets:
            raise ValueError("give at least one set to score (--set NAME=DIR)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")


@dataclass(frozen=True)
class EvaluateResult(StageResult):
    extractor: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    rows: dict[str, Any] = field(default_factory=dict)
    headline: str = ""

    @property
    def message(self) -> str:
        return self.headline


def is_complete(out: str | Path, spec: EvaluateSpec | None = None) -> bool:
    """``metrics.json`` is written after the table and the grids; with ``spec``, it must also record the
    same inputs (each set's manifest hash, the protocol config), so a re-drawn upstream set is scored again."""
    path = Path(out) / METRICS_JSON
    if not path.is_file():
        return False
    return spec is None or json.loads(path.read_text()).get(KEY_INPUTS) == _inputs(spec)


def _inputs(spec: EvaluateSpec) -> dict[str, Any]:
    """What the numbers depend on besides the code: the sets' manifests and the protocol."""
    sets = {name: manifest_digest(directory) for name, directory in spec.sets.items()}
    inputs = {"real": spec.real, "sets": sets, "config": asdict(spec.config), "features": spec.features,
              "extractor": spec.domain_checkpoint or spec.inception_weights}
    return json.loads(json.dumps(inputs))  # as metrics.json holds it (tuples become lists)


def _extractor(spec: EvaluateSpec, tracker: Tracker, progress: Callable[..., Any] | None) -> ExtractorSpec:
    if spec.features == "inception":
        return inception_spec(spec.inception_weights)
    if spec.domain_checkpoint:
        return domain_spec(spec.domain_checkpoint)
    if spec.real not in DATASET_NAMES:
        raise ValueError("--real is a sample-set directory: pass --domain-checkpoint (a domain network is only "
                         "trained automatically from a labelled dataset name)")
    return domain_spec(ensure_domain(spec.real, Path(spec.out) / DOMAIN_DIR, root=spec.root, tracker=tracker,
                                     progress=progress).path)


def evaluate_sets(spec: EvaluateSpec, *, tracker: Tracker | None = None,
                  progress: Callable[..., Any] | None = None,
                  progress_bar: Callable[..., Any] | None = None) -> EvaluateResult:
    """IS / FID / KID / precision-recall of every set in ``spec.sets`` plus the real reference row."""
    tracker = tracker or NullTracker()
    out = Path(spec.out)
    config = spec.config
    with output_lock(out):
        real, reference = load_real(spec.real, spec.root)
        sets = [load_sample_set(name, directory) for name, directory in spec.sets.items()]
        validate_sets(real, reference, sets, config)  # fail before any training or extraction
        set_torch_threads(spec.threads)
        device = autodetect_device(spec.device)
        extractor = _extractor(spec, tracker, progress_bar)
        featurizer = FidelityFeaturizer(extractor, batch_size=spec.batch_size, device=device)
        evaluation = evaluate(real, reference, sets, featurizer, config, extractor=extractor.to_dict(),
                              progress=progress)
        written = write_outputs(out, evaluation, real, sets, inputs=_inputs(spec))
        tracker.log_params({"extractor": extractor.description})
        for run in range(config.runs):
            tracker.log_metrics(mlflow_run_metrics(evaluation, run), step=run)
        tracker.log_metrics(mlflow_metrics(evaluation))
        for path in written:
            tracker.log_artifact(path)
        log_sample_sets(tracker, spec.sets.values(), context="evaluation")
        fids = ", ".join(f"{row.name} {row.mean()[KEY_FID]:.3g}" for row in evaluation.rows)
        return EvaluateResult(
            out=str(out), extractor=extractor.to_dict(), files=tuple(str(p) for p in written),
            rows={row.name: {"mean": row.mean(), "std": row.std()} for row in evaluation.rows},
            headline=f"scored {len(sets)} set(s) on k={config.k} x {config.runs} run(s) with {spec.features} features; "
                     f"FID: {fids}; table: {out / TABLE_MD}")
