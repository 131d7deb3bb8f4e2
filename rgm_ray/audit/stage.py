"""The audit stage's entry point: *how* sample sets differ from the data (class balance, memorisation,
diversity), where IS/FID/KID only say *that* they differ.

``rgm audit`` calls :func:`audit_sets`. The real data is a dataset name: its test split is the
reference row and calibrates every threshold, its train split is the memorisation bank. A set with a
``copies`` column is audited as the multiset it stands for; a set larger than ``max_images`` (and the
test split) is cut to a seeded uniform subset. Everything is checked before any feature is extracted,
and ``audit.json`` is written last, so its presence marks a finished audit.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from rgm_ray.audit import measures
from rgm_ray.audit.neighbours import nearest_neighbours, pixel_vectors
from rgm_ray.audit.outputs import AUDIT_JSON, KEY_INPUTS, TABLE_MD, write_outputs
from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.evaluate.features import FidelityFeaturizer, domain_spec
from rgm_ray.evaluate.inputs import load_sample_set
from rgm_ray.evaluate.protocol import REFERENCE, EvalSet, check_set_name
from rgm_ray.models.checkpoint import checkpoint_digest
from rgm_ray.results import StageResult
from rgm_ray.runtime import autodetect_device, set_torch_threads
from rgm_ray.seeding import derive_seed, numpy_rng
from rgm_ray.store import dataset_source
from rgm_ray.store.lineage import log_sample_sets
from rgm_ray.store.lock import output_lock
from rgm_ray.store.manifest import manifest_digest
from rgm_ray.tracking import NullTracker, Tracker

# Seed-stream path items (under the config seed), each followed by the row name's crc32.
STREAM_SUBSET = 1
STREAM_CLASS = 2
STREAM_PIXEL = 3
STREAM_FEATURE = 4
STREAM_BIRTHDAY = 5
STREAM_CHANGE = 6
STREAM_HELD_OUT = 7


@dataclass(frozen=True)
class AuditConfig:
    """What the numbers depend on besides the data (recorded in audit.json; same config, same numbers)."""

    seed: int = 0
    bootstrap: int = 1000  # bootstrap resamples per interval
    nn_k: int = 3  # nearest training neighbours per sample (the figure shows them)
    threshold_quantile: float = 0.05  # of the real test split's nearest-train distances: the near-copy threshold
    birthday_batch: int = 100  # s, images per birthday batch
    birthday_batches: int = 50
    train_bank: int | None = None  # first N train images as the memorisation bank (None: the whole split)
    density_k: int = 5
    max_images: int = 10000  # per set and of the test split: a seeded uniform subset beyond it
    figure_samples: int = 8  # top-weighted samples shown beside their neighbours

    def __post_init__(self) -> None:
        positive = {"bootstrap": self.bootstrap, "nn_k": self.nn_k, "birthday_batches": self.birthday_batches,
                    "density_k": self.density_k, "figure_samples": self.figure_samples,
                    "train_bank": 1 if self.train_bank is None else self.train_bank}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"audit {name} must be a positive integer, got {value!r}")
        if self.seed < 0 or not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError(f"audit seed must be >= 0 and threshold_quantile in (0, 1), got {self.seed}, "
                             f"{self.threshold_quantile}")
        if self.birthday_batch < 2 or self.max_images < self.birthday_batch:
            raise ValueError(f"audit birthday_batch must be >= 2 and <= max_images, got {self.birthday_batch} "
                             f"and {self.max_images}")


@dataclass(frozen=True)
class AuditSpec:
    """Which sets to audit against which dataset, with which domain network, into ``out``."""

    real: str  # a dataset name: test split = reference row and calibration, train split = bank
    sets: dict[str, str]  # row name -> sample-set directory
    out: str
    domain_checkpoint: str
    config: AuditConfig = AuditConfig()
    compare: dict[str, str] | None = None  # set -> the set its near-copy change is measured against
    #                                        (e.g. {"resampled": "plain"}); default: every other set vs the first
    root: str | None = None
    batch_size: int = 512  # feature-extraction batch (no effect on the numbers)
    device: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.real not in DATASET_NAMES:
            raise ValueError(f"--real {self.real!r}: the audit needs a dataset name ({', '.join(DATASET_NAMES)}); "
                             "its train split is the memorisation bank")
        if not self.sets:
            raise ValueError("give at least one set to audit (--set NAME=DIR)")
        for name in self.sets:
            check_set_name(name)
        for name, baseline in (self.compare or {}).items():
            if name not in self.sets or baseline not in self.sets or name == baseline:
                raise ValueError(f"--compare {name}={baseline}: name two different sets of {', '.join(self.sets)}")
        if not self.domain_checkpoint:
            raise ValueError("the audit needs --domain-checkpoint DIR (a domain ResNet checkpoint)")

    @property
    def comparisons(self) -> dict[str, str]:
        """set -> baseline set, for the near-copy change."""
        if self.compare is not None:
            return dict(self.compare)
        first = next(iter(self.sets))
        return {name: first for name in self.sets if name != first}


@dataclass(frozen=True)
class AuditResult(StageResult):
    files: tuple[str, ...] = ()
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # row -> measures.row_summary
    headline: str = ""

    @property
    def message(self) -> str:
        return self.headline


def is_complete(out: str | Path, spec: AuditSpec | None = None) -> bool:
    """``audit.json`` is written last; with ``spec`` it must also record the same inputs (each set's
    manifest hash, the config, the domain network's digest), so a changed input is audited again."""
    path = Path(out) / AUDIT_JSON
    if not path.is_file():
        return False
    return spec is None or json.loads(path.read_text()).get(KEY_INPUTS) == _inputs(spec)


def _inputs(spec: AuditSpec) -> dict[str, Any]:
    sets = {name: manifest_digest(d) for name, d in spec.sets.items()}
    checkpoint = Path(spec.domain_checkpoint)
    inputs = {"real": spec.real, "sets": sets, "config": asdict(spec.config), "compare": spec.comparisons,
              "domain_checkpoint": str(checkpoint),
              "domain_digest": checkpoint_digest(checkpoint) if checkpoint.is_dir() else None}
    return json.loads(json.dumps(inputs))


def _stream(name: str) -> int:
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class Bank:
    """The memorisation bank (train images) in both spaces."""

    images: np.ndarray
    pixels: torch.Tensor
    features: torch.Tensor


@dataclass(frozen=True)
class Pool:
    """One audited row's images (expanded by ``copies``, capped) with their features and nearest-bank
    distances ``[n, nn_k]`` in both spaces."""

    name: str
    source: str
    size: int  # audited images
    features: torch.Tensor
    labels: np.ndarray  # the domain classifier's predicted class
    num_classes: int  # the classifier's
    pixel_nn: np.ndarray
    feature_nn: np.ndarray


def _audited_rows(s: EvalSet, config: AuditConfig) -> np.ndarray:
    expanded = s.expanded_rows()
    if len(expanded) <= config.max_images:
        return expanded
    return expanded[numpy_rng(config.seed, STREAM_SUBSET, _stream(s.name)).permutation(len(expanded))
                    [:config.max_images]]


def _pool(s: EvalSet, rows: np.ndarray, featurize: FidelityFeaturizer, bank: Bank, k: int) -> Pool:
    """Features and neighbours of each distinct row once, spread over its repeats."""
    unique, inverse = np.unique(rows, return_inverse=True)
    images = s.images[unique]
    features = featurize(images)
    pixel_nn, _ = nearest_neighbours(pixel_vectors(images), bank.pixels, k)
    feature_nn, _ = nearest_neighbours(features.features, bank.features, k)
    labels = features.logits.argmax(1).numpy()
    return Pool(s.name, s.source, len(rows), features.features[torch.from_numpy(inverse)], labels[inverse],
                int(features.logits.shape[1]), pixel_nn[inverse], feature_nn[inverse])


def _check_sizes(reference: EvalSet, sets: list[EvalSet], bank_size: int, config: AuditConfig) -> None:
    for s in [reference, *sets]:
        if s.shape != reference.shape:
            raise ValueError(f"set {s.name!r} has images of shape {s.shape}, the real data {reference.shape}")
        if min(s.size, config.max_images) < config.birthday_batch:
            raise ValueError(f"set {s.name!r} has {s.size} images, fewer than the birthday batch size "
                             f"{config.birthday_batch}; lower --birthday-batch")
    if min(reference.size, config.max_images) <= max(config.density_k, 3):
        raise ValueError(f"the real test split has {reference.size} images: too few for density_k={config.density_k}")
    if bank_size < config.nn_k:
        raise ValueError(f"the memorisation bank has {bank_size} images, fewer than nn_k={config.nn_k}")


def _row(pool: Pool, reference: Pool, thresholds: dict[str, float], held_out: torch.Tensor,
         config: AuditConfig) -> dict[str, Any]:
    seed = lambda stream: derive_seed(config.seed, stream, _stream(pool.name))  # noqa: E731
    is_reference = pool is reference
    fake = held_out if is_reference else pool.features
    return {
        "name": pool.name, "role": REFERENCE if is_reference else "set", "source": pool.source,
        "images": pool.size,
        "class_balance": measures.class_balance(pool.labels, reference.labels, reference.num_classes,
                                                reps=config.bootstrap, seed=seed(STREAM_CLASS)),
        "memorisation": {
            "pixel": measures.memorisation(pool.pixel_nn[:, 0], thresholds["pixel"], reps=config.bootstrap,
                                           seed=seed(STREAM_PIXEL)),
            "feature": measures.memorisation(pool.feature_nn[:, 0], thresholds["feature"], reps=config.bootstrap,
                                             seed=seed(STREAM_FEATURE))},
        "diversity": measures.diversity(pool.features, thresholds["feature"], reference.features, fake,
                                        batch_size=config.birthday_batch, batches=config.birthday_batches,
                                        density_k=config.density_k, seed=seed(STREAM_BIRTHDAY)),
    }


def audit_sets(spec: AuditSpec, *, tracker: Tracker | None = None,
               progress: Callable[..., Iterable] | None = None) -> AuditResult:
    """Class balance, memorisation and diversity of every set in ``spec.sets`` plus the reference row."""
    tracker = tracker or NullTracker()
    config, out = spec.config, Path(spec.out)
    show = progress or (lambda it, **_: it)
    with output_lock(out):
        extractor = domain_spec(spec.domain_checkpoint)
        test, train = load_dataset(spec.real, "test", spec.root), load_dataset(spec.real, "train", spec.root)
        reference = EvalSet(REFERENCE, test.images, source=dataset_source(test))
        sets = [load_sample_set(name, directory) for name, directory in spec.sets.items()]
        bank_images = train.images[:config.train_bank]
        _check_sizes(reference, sets, len(bank_images), config)
        set_torch_threads(spec.threads)
        featurize = FidelityFeaturizer(extractor, batch_size=spec.batch_size, device=autodetect_device(spec.device))

        bank = Bank(bank_images, pixel_vectors(bank_images), featurize(bank_images).features)
        pools = [_pool(s, _audited_rows(s, config), featurize, bank, config.nn_k)
                 for s in show([reference, *sets], desc="features + neighbours", total=len(sets) + 1, unit="set")]
        ref_pool = pools[0]
        q = config.threshold_quantile
        thresholds = {"quantile": q, "pixel": float(np.quantile(ref_pool.pixel_nn[:, 0], q)),
                      "feature": float(np.quantile(ref_pool.feature_nn[:, 0], q))}
        held_out = bank.features[torch.from_numpy(
            numpy_rng(config.seed, STREAM_HELD_OUT).permutation(len(bank.features))[:ref_pool.size])]
        rows = [_row(pool, ref_pool, thresholds, held_out, config)
                for pool in show(pools, desc="audit", total=len(pools), unit="set")]

        by_name = {pool.name: pool for pool in pools}
        change = {name: {"baseline": baseline, **{
            space: measures.near_copy_change(getattr(by_name[name], f"{space}_nn")[:, 0],
                                             getattr(by_name[baseline], f"{space}_nn")[:, 0], thresholds[space],
                                             reps=config.bootstrap,
                                             seed=derive_seed(config.seed, STREAM_CHANGE, _stream(name)))
            for space in ("pixel", "feature")}} for name, baseline in spec.comparisons.items()}
        for row in rows:
            row["summary"] = measures.row_summary(row)
        record = {"real": spec.real, "classes": list(test.classes)[:ref_pool.num_classes], "config": asdict(config),
                  "extractor": extractor.to_dict(), "thresholds": thresholds,
                  "bank": {"split": "train", "images": len(bank_images)},
                  "reference_diversity": "density, coverage, precision and recall of the reference row: "
                                         "train-split (bank) images against the test split",
                  "rows": rows, "near_copy_change": change, KEY_INPUTS: _inputs(spec)}
        written = write_outputs(out, record, sets, bank, config,
                                {p.name: {"pixel": p.pixel_nn[:, 0], "feature": p.feature_nn[:, 0]} for p in pools})
        metrics = {f"{row['name']}/{key}": value for row in rows for key, value in row["summary"].items()}
        # the near-copy thresholds are measured on the test split: metrics, not settings
        metrics.update({f"threshold_{space}": thresholds[space] for space in ("pixel", "feature")})
        tracker.log_params({"extractor": extractor.description})
        tracker.log_metrics(metrics)
        for path in written:
            tracker.log_artifact(path)
        log_sample_sets(tracker, spec.sets.values(), context="evaluation")
        tvs = ", ".join(f"{row['name']} {row['summary']['class_tv']:.3f}" for row in rows[1:])
        copies = ", ".join(f"{row['name']} {row['summary']['near_copy_pixel']:.3f}" for row in rows[1:])
        return AuditResult(out=str(out), metrics=metrics, files=tuple(str(p) for p in written),
                           rows={row["name"]: row["summary"] for row in rows},
                           headline=f"audited {len(sets)} set(s) against {spec.real}: class TV {tvs}; pixel "
                                    f"near-copy fraction {copies} (reference {q:g} by construction); "
                                    f"table: {out / TABLE_MD}")
