"""The weigh stage end to end: pools -> backbone -> cross-fitted, calibrated heads -> Ray Data scoring -> set.

Layout of ``OUT``::

    domain/         domain ResNet trained here (``--backbone domain`` without ``--domain-checkpoint``);
                    reused by later runs on the same dataset
    noise/          the noise baseline's images (``--baseline noise``)
    features/       cached backbone features, ``<role>-<key>.npy``
    classifier/     the fitted weigher (weigher.json, heads.pt, crossfit.npz)
    weighted/       the generated samples' rows + float32 ``log_weight`` (the stage's output set)
    calibration.json  weights_summary.json  reliability.png  log_weight_hist.png  ess_vs_alpha.png

Fitting (backbone features, head training, temperature fits) runs on the driver's device; the
scoring pass over the whole pool runs on Ray Data (``scoring.py``). ``OUT`` must therefore be on
storage every Ray worker can read (the scorers load ``classifier/`` from there).

Leakage of the domain backbone: it is trained on labelled real images, and a classifier could learn
"seen by the backbone" instead of "real". When the real pool is the backbone's own training split,
the rows it was trained on (``train_images`` of its config) are removed from the real pool; if the
backbone saw the whole split that is impossible and the report says so.

``--backbone gan-discriminator --checkpoint DIR`` weighs with the GAN's own discriminator instead of a
trained-for-purpose classifier: log w = D(x) / T, no head is fitted, and each fold's temperature is
fitted on all of the other folds' rows (training and calibration parts alike, as nothing is trained
on them). D was trained on the GAN's train split, but its folds use the weigh stage's real pool as
usual; the same leakage rule applies (the GAN's ``train_images`` rows are removed when that pool is
its training split, else the report notes that D saw every real image).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rgm_ray.configs import strict_from_dict
from rgm_ray.models.checkpoint import read_checkpoint_config
from rgm_ray.models.domain import DEFAULT_DOMAIN, DomainConfig, ensure_domain
from rgm_ray.models.inception import inception_weights_file
from rgm_ray.results import StageResult
from rgm_ray.runtime import ClusterOptions, autodetect_device
from rgm_ray.store import (IMAGE, LABEL, LOG_WEIGHT, SAMPLE_ID, SampleSet, SampleSetWriter, decode_images,
                           make_table, provenance)
from rgm_ray.store import completion
from rgm_ray.store.completion import check_not_inside, mark_complete, stage_output
from rgm_ray.store.lineage import log_sample_sets
from rgm_ray.store.lock import output_lock
from rgm_ray.tracking import NullTracker, Tracker
from rgm_ray.weigh.backbones import GAN_DISCRIMINATOR, BackboneSpec, build_backbone
from rgm_ray.weigh.calibration import DEFAULT_BINS, KEY_ACCURACY, KEY_ECE, fit_temperature
from rgm_ray.weigh.classifier import HeadConfig, build_head, train_head
from rgm_ray.weigh.crossfit import CrossFitPlan, check_plan_settings, plan_crossfit
from rgm_ray.weigh.diagnostics import (AFTER, BEFORE, CALIBRATION_JSON, ESS_ALPHA_PNG, HISTOGRAM_PNG, RELIABILITY_PNG,
                                       WEIGHTS_SUMMARY_JSON, HeldOut, calibration_metrics_to_log, calibration_report,
                                       write_calibration, write_weight_diagnostics)
from rgm_ray.weigh.features import DEFAULT_CHUNK, cached_features, extract_features, feature_cache_key
from rgm_ray.weigh.inputs import (ImagePool, check_compatible, open_real, open_samples, sample_set_pool,
                                  write_noise_set)
from rgm_ray.weigh.scoring import Scores, ScoringOptions, score_sample_set
from rgm_ray.weigh.transforms import KEY_ESS, KEY_ESS_FRAC, KEY_MAX_SHARE
from rgm_ray.weigh.weigher import WeigherConfig, apply_temperature, head_logits, save_weigher

DOMAIN_DIR, NOISE_DIR, FEATURES_DIR = "domain", "noise", "features"
CLASSIFIER_DIR, WEIGHTED_DIR = "classifier", "weighted"
STAGE = "weigh"
ARTEFACTS = (WEIGHTED_DIR, CLASSIFIER_DIR, CALIBRATION_JSON, WEIGHTS_SUMMARY_JSON, RELIABILITY_PNG, HISTOGRAM_PNG,
             ESS_ALPHA_PNG)
CACHES = (DOMAIN_DIR, NOISE_DIR, FEATURES_DIR)
SCORING_CLUSTER = ClusterOptions(cpus_per_worker=0.5)  # Ray Data actors must leave CPUs for the read tasks
CALIBRATIONS = ("temperature", "none")
BASELINES = ("noise",)
KEY_SCORING_SECONDS = "scoring_seconds"
KEY_SCORING_DIFF = "scoring_max_abs_diff"


@dataclass(frozen=True)
class WeighConfig:
    """Everything that changes the weights (a preset's ``weigh`` section; where it runs is ``ClusterOptions``)."""

    backbone: str = "domain"
    domain_checkpoint: str | None = None
    inception_weights: str | None = None
    gan_checkpoint: str | None = None  # the GAN checkpoint directory of --backbone gan-discriminator
    folds: int = 2
    calibration: str = "temperature"
    calibration_fraction: float = 0.2
    max_per_class: int | None = None  # cap on fitting data per class (None: the smaller pool)
    head: HeadConfig = field(default_factory=HeadConfig)
    domain: DomainConfig = DEFAULT_DOMAIN  # used only when the stage trains the domain backbone itself
    seed: int = 0
    bins: int = DEFAULT_BINS
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.backbone != "domain" and self.domain_checkpoint is not None:
            raise ValueError(f"--domain-checkpoint only applies to --backbone domain, not {self.backbone!r}")
        if self.backbone != "inception" and self.inception_weights is not None:
            raise ValueError(f"--inception-weights only applies to --backbone inception, not {self.backbone!r}")
        if self.backbone != GAN_DISCRIMINATOR and self.gan_checkpoint is not None:
            raise ValueError(f"--checkpoint only applies to --backbone {GAN_DISCRIMINATOR}, not {self.backbone!r}")
        check_plan_settings(self.folds, self.calibration_fraction, self.max_per_class)

    @property
    def checkpoints(self) -> list[str]:
        """The checkpoint directories the stage reads (``--out`` must not lie inside them)."""
        return [path for path in (self.domain_checkpoint, self.gan_checkpoint) if path]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WeighConfig":
        """From a preset's ``weigh`` section: nested ``head`` / ``domain`` mappings become their configs."""
        d = dict(d)
        if "head" in d:
            d["head"] = strict_from_dict(HeadConfig, d["head"], "weigh.head")
        if "domain" in d:
            d["domain"] = DomainConfig.from_dict(d["domain"])
        return strict_from_dict(cls, d, "weigh")


def _without_training_rows(real: ImagePool, trained_on: str | None, train_images: int | None, network: str,
                           risk: str) -> tuple[ImagePool, list[str]]:
    """The real pool minus the rows ``network`` was trained on (the first ``train_images`` of dataset
    ``trained_on``'s train split; all of them when None), and a note for the report."""
    if real.dataset is None or real.dataset != (trained_on, "train"):
        return real, []
    if train_images is None:
        return real, [f"{network} saw every image of {real.name}: {risk}"]
    real = real.without(np.arange(int(train_images)), f"the {train_images} images {network} was trained on")
    return real, [f"excluded the {train_images} real images {network} was trained on"]


def _check_backbone_inputs(config: WeighConfig) -> None:
    """A backbone's missing flag or file, refused before anything is written (contents are checked on use)."""
    if config.backbone == "inception":
        inception_weights_file(config.inception_weights, needed_by="--backbone inception")
    elif config.backbone == GAN_DISCRIMINATOR:
        BackboneSpec(GAN_DISCRIMINATOR, config.gan_checkpoint)  # reads the checkpoint's config.json only
    elif config.domain_checkpoint is not None:
        read_checkpoint_config(config.domain_checkpoint)


def _resolve_discriminator(config: WeighConfig, real: ImagePool) -> tuple[BackboneSpec, ImagePool, list[str]]:
    """The GAN checkpoint's discriminator as the scorer; its image shape must be the pools' one."""
    spec = BackboneSpec(GAN_DISCRIMINATOR, config.gan_checkpoint and str(Path(config.gan_checkpoint).resolve()))
    if spec.image_shape != real.shape:
        raise ValueError(f"--checkpoint {config.gan_checkpoint}: the GAN's discriminator takes images of shape "
                         f"{spec.image_shape}, but the images to weigh have {real.shape}")
    record = read_checkpoint_config(spec.path)
    real, notes = _without_training_rows(
        real, record.get("dataset"), (record.get("train_config") or {}).get("train_images"), "the GAN's discriminator",
        "it may be more confident on them than on unseen real images, and its temperatures are fitted on them")
    return spec, real, notes


def _resolve_backbone(config: WeighConfig, real: ImagePool, out: Path, *, root, device, tracker: Tracker,
                      progress) -> tuple[BackboneSpec, ImagePool, list[str]]:
    """The backbone spec, the real pool without the backbone's training rows, and notes for the report."""
    if config.backbone == GAN_DISCRIMINATOR:
        return _resolve_discriminator(config, real)
    if config.backbone == "inception":
        weights = config.inception_weights and str(Path(config.inception_weights).resolve())
        return BackboneSpec("inception", weights), real, []
    if config.backbone == "cnn":
        return BackboneSpec("cnn"), real, []
    notes: list[str] = []
    path = Path(config.domain_checkpoint) if config.domain_checkpoint else out / DOMAIN_DIR
    if config.domain_checkpoint is None:
        if real.dataset is None or real.dataset[1] != "train":
            raise ValueError(f"--backbone domain needs --domain-checkpoint DIR when {real.name} is not a dataset's "
                             "train split (the stage trains the domain network on labelled real data)")
        domain = ensure_domain(real.dataset[0], path, config.domain, root=root, tracker=tracker, device=device,
                               progress=progress)
        notes.append(f"trained the domain backbone into {path} ({asdict(config.domain)})" if domain.trained
                     else f"reused the domain backbone in {path}")
    record = read_checkpoint_config(path)
    real, excluded = _without_training_rows(
        real, record.get("dataset"), (record.get("domain_config") or {}).get("train_images"), "the domain backbone",
        "real features may look 'familiar' to the classifier; prefer a backbone trained on a subset")
    return BackboneSpec("domain", str(path.resolve())), real, notes + excluded  # absolute: the scorers run elsewhere


def _pool_features(pool: ImagePool, ids: np.ndarray, role: str, spec: BackboneSpec, backbone, *, cache_dir: Path,
                   chunk: int, device, progress) -> tuple[torch.Tensor, bool]:
    def compute() -> np.ndarray:
        return extract_features(backbone, pool.fetch(ids), chunk=chunk, device=device, progress=progress,
                                desc=f"{role} features")

    if not spec.frozen_features:
        return torch.from_numpy(pool.fetch(ids)), False  # cnn: the "features" are the pixels
    key = feature_cache_key(spec.digest(), pool.identity, str(chunk), np.ascontiguousarray(ids).tobytes())
    features, hit = cached_features(cache_dir, role, key, compute)
    return torch.from_numpy(features), hit


def _rows(all_ids: np.ndarray, ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.searchsorted(all_ids, ids))


def _fit_folds(plan: CrossFitPlan, real_x: torch.Tensor, gen_x: torch.Tensor, spec: BackboneSpec,
               config: WeighConfig, *, device, progress) -> tuple[list[torch.nn.Module], list[HeldOut]]:
    """Train (unless the backbone scores by itself), calibrate and test one head per fold on the cached features."""
    heads, held_out = [], []

    def part(real_ids: np.ndarray, gen_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([real_x[_rows(plan.real_ids, real_ids)], gen_x[_rows(plan.gen_ids, gen_ids)]])
        y = torch.cat([torch.ones(real_ids.size), torch.zeros(gen_ids.size)])
        return x, y

    for split in plan.folds:
        head = build_head(spec.kind, tuple(real_x.shape[1:]), config.head)
        best_epoch, sizes = None, split.sizes()
        if spec.fits_head:
            train, calib = part(split.train_real, split.train_gen), part(split.calib_real, split.calib_gen)
            best_epoch = train_head(head, train, calib, config.head, seed=config.seed, fold=split.fold,
                                    device=device, progress=progress).best_epoch
        else:  # nothing is trained, so every row outside fold k may fit model k's temperature
            calib = part(np.concatenate([split.train_real, split.calib_real]),
                         np.concatenate([split.train_gen, split.calib_gen]))
            fitting = sizes["train_per_class"] + sizes["calibration_per_class"]
            sizes.update(train_per_class=0, calibration_per_class=fitting)
        temperature = 1.0
        if config.calibration == "temperature":
            calib_logits = head_logits(head, calib[0], chunk=config.chunk, device=device)
            temperature = fit_temperature(calib_logits, calib[1].numpy() > 0.5)
        test_x, test_y = part(split.test_real, split.test_gen)
        held_out.append(HeldOut(split.fold, head_logits(head, test_x, chunk=config.chunk, device=device),
                                test_y.numpy() > 0.5, temperature, best_epoch, sizes))
        heads.append(head)
    return heads, held_out


def _scoring_consistency(scores: Scores, plan: CrossFitPlan, held_out: list[HeldOut]) -> float:
    """Largest |scored log-weight − driver's out-of-fold calibrated logit| on generated test rows (0 expected)."""
    worst = 0.0
    for split, h in zip(plan.folds, held_out):
        n_real = split.test_real.size
        expected = apply_temperature(h.logits[n_real:], h.temperature)
        rows = np.searchsorted(scores.sample_ids, split.test_gen)
        worst = max(worst, float(np.max(np.abs(scores.log_weights[rows].astype(np.float64) - expected))))
    return worst


def _write_weighted(samples: SampleSet, scores: Scores, out: Path, *, info: dict[str, Any], command: str | None,
                    seed: int) -> None:
    """The input rows, shard for shard, plus ``log_weight`` looked up by ``sample_id`` (an unfinished
    run's ``weighted/`` is replaced: the stage is not complete until ``_complete.json``)."""
    with SampleSetWriter(out, source=samples.source, overwrite=True, prov=provenance(command, seed),
                         info=info) as writer:
        for table in samples.iter_tables([SAMPLE_ID, IMAGE, LABEL]):
            ids = table.column(SAMPLE_ID).to_numpy()
            log_weights = scores.log_weights[np.searchsorted(scores.sample_ids, ids)]
            writer.write(make_table(ids, decode_images(table.column(IMAGE), samples.shape),
                                    table.column(LABEL).to_numpy(), source=samples.source,
                                    extra={LOG_WEIGHT: log_weights}))


@dataclass(frozen=True)
class WeighSpec:
    """What to weigh against what, into which directory (the method is ``config``)."""

    real: str  # a dataset name (its train split) or a sample-set directory
    out: str
    samples: str | None = None  # the generated set; exactly one of samples / baseline
    baseline: str | None = None
    num_noise: int = 10000  # images of the noise baseline
    root: str | None = None  # dataset root when ``real`` is a dataset name
    config: WeighConfig = field(default_factory=WeighConfig)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    device: str | None = None  # fitting device on the driver (default: cuda if any)

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.baseline is None):
            raise ValueError("give exactly one of --samples DIR and --baseline noise")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r}; known: {', '.join(BASELINES)}")


@dataclass(frozen=True)
class WeighResult(StageResult):
    weighted: str = ""
    num_samples: int = 0
    backbone: str = ""
    folds: int = 0
    calibration: str = ""
    temperatures: tuple[float, ...] = ()
    workers: int = 0
    rows_per_worker: dict[int, int] = field(default_factory=dict)
    feature_cache_hits: int = 0
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    headline: str = ""

    @property
    def message(self) -> str:
        return self.headline


def is_complete(out: str | Path) -> bool:
    """All of the stage's artefacts are in ``out`` and unchanged since it finished."""
    return completion.is_complete(out, STAGE)


def weigh(spec: WeighSpec, cluster: ClusterOptions = SCORING_CLUSTER, *, overwrite: bool = False,
          tracker: Tracker | None = None, progress: Callable[..., Any] | None = None,
          command: str | None = None) -> WeighResult:
    """Weigh ``spec.samples`` (or the noise baseline) against ``spec.real`` into ``spec.out``.

    The output (layout in the module doc) is published as a whole: the diagnostics, then the
    weighted set, then ``_complete.json``; until that last write the directory is unfinished, and a
    re-run resumes into it (feature caches and all). ``overwrite`` rebuilds a finished output beside
    it and swaps it in only when the new one is complete.
    """
    tracker = tracker or NullTracker()
    config = spec.config
    started = time.perf_counter()
    inputs = [spec.samples] if spec.samples else []
    if Path(spec.real).is_dir():
        inputs.append(spec.real)
    inputs.extend(config.checkpoints)
    check_not_inside(spec.out, inputs, flag="--out")
    _check_backbone_inputs(config)
    torch_device = autodetect_device(spec.device)
    real_pool = open_real(spec.real, spec.root)  # inputs are checked before anything is written
    samples = None if spec.baseline else open_samples(spec.samples)
    with (output_lock(spec.out, command=command),
          stage_output(spec.out, STAGE, overwrite=overwrite, known=ARTEFACTS + CACHES) as out):
        sample_set = (write_noise_set(out / NOISE_DIR, real_pool.shape, spec.num_noise, config.seed) if spec.baseline
                      else samples)
        gen_pool = sample_set_pool(sample_set, "--baseline noise" if spec.baseline else f"--samples {spec.samples}")
        check_compatible(real_pool, gen_pool)
        backbone_spec, real_pool, notes = _resolve_backbone(config, real_pool, out, root=spec.root,
                                                            device=torch_device, tracker=tracker, progress=progress)
        plan = plan_crossfit(real_pool.ids, gen_pool.ids, folds=config.folds, seed=config.seed,
                             calibration_fraction=config.calibration_fraction, max_per_class=config.max_per_class,
                             real_name=real_pool.name, gen_name=gen_pool.name)

        backbone = build_backbone(backbone_spec, torch_device)
        feature_args = dict(spec=backbone_spec, backbone=backbone, cache_dir=out / FEATURES_DIR, chunk=config.chunk,
                            device=torch_device, progress=progress)
        real_x, real_hit = _pool_features(real_pool, plan.real_ids, "real", **feature_args)
        gen_x, gen_hit = _pool_features(gen_pool, plan.gen_ids, "generated", **feature_args)
        heads, held_out = _fit_folds(plan, real_x, gen_x, backbone_spec, config, device=torch_device,
                                     progress=progress)
        weigher = WeigherConfig(backbone_spec, config.head, real_pool.shape, tuple(real_x.shape[1:]), config.seed,
                                tuple(h.temperature for h in held_out), config.chunk)
        save_weigher(out / CLASSIFIER_DIR, weigher, heads, plan)

        scores = score_sample_set(sample_set, str(out / CLASSIFIER_DIR), cluster, spec.scoring, progress=progress)
        report = calibration_report(held_out, method=config.calibration, bins=config.bins)
        report.update(crossfit=plan.describe(), backbone=backbone_spec.to_dict(), notes=notes,
                      **{KEY_SCORING_DIFF: _scoring_consistency(scores, plan, held_out)})
        artefacts = write_calibration(out, report)
        weights, weight_files = write_weight_diagnostics(out, scores.log_weights)
        info = {"weighing": {"real": real_pool.name, "backbone": backbone_spec.to_dict(), "folds": config.folds,
                             "calibration": config.calibration, "temperatures": list(weigher.temperatures),
                             "seed": config.seed, "input": str(sample_set.path)}}
        _write_weighted(sample_set, scores, out / WEIGHTED_DIR, info=info, command=command, seed=config.seed)
        mark_complete(out, STAGE, [WEIGHTED_DIR, CLASSIFIER_DIR, *(p.name for p in (*artefacts, *weight_files))])

    final = Path(spec.out)
    metrics = {**calibration_metrics_to_log(report), **weights, KEY_SCORING_SECONDS: scores.seconds,
               KEY_SCORING_DIFF: report[KEY_SCORING_DIFF]}
    tracker.log_metrics(metrics)
    for path in (*artefacts, *weight_files):
        tracker.log_artifact(final / path.name)
    log_sample_sets(tracker, [] if spec.baseline else [spec.samples], context="training")
    pooled = report["pooled"]
    headline = (
        f"weighed {scores.sample_ids.size} samples into {final / WEIGHTED_DIR}: held-out accuracy "
        f"{pooled[AFTER][KEY_ACCURACY]:.3f}, ECE {pooled[BEFORE][KEY_ECE]:.3f} -> {pooled[AFTER][KEY_ECE]:.3f} "
        f"(T = {', '.join(f'{t:.3g}' for t in weigher.temperatures)}), ESS/N {weights[KEY_ESS_FRAC]:.3g} "
        f"(ESS {weights[KEY_ESS]:.1f}), max normalised weight {weights[KEY_MAX_SHARE]:.3g}")
    return WeighResult(out=str(final), metrics=metrics, weighted=str(final / WEIGHTED_DIR),
                       num_samples=int(scores.sample_ids.size), backbone=backbone_spec.kind, folds=config.folds,
                       calibration=config.calibration, temperatures=tuple(weigher.temperatures),
                       workers=scores.workers, rows_per_worker=scores.rows_per_worker,
                       feature_cache_hits=int(real_hit) + int(gen_hit), notes=tuple(notes),
                       seconds=time.perf_counter() - started, headline=headline)
