"""``rgm evaluate``: IS / FID / KID / precision-recall of sample sets against real data (thesis Table 6.3)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rgm_ray.cli.common import UserError, add_common, progress, progress_bar, tracked_run
from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.evaluate.features import (EXTRACTOR_KINDS, ExtractorSpec, FidelityFeaturizer, domain_spec,
                                      inception_spec)
from rgm_ray.evaluate.inputs import load_real, load_sample_set, parse_set_argument
from rgm_ray.evaluate.metrics import KEY_FID, KID_SUBSETS
from rgm_ray.evaluate.outputs import TABLE_MD, mlflow_metrics, mlflow_run_metrics, write_outputs
from rgm_ray.evaluate.protocol import EvalConfig, evaluate, validate_sets
from rgm_ray.models.checkpoint import CONFIG_FILE, read_checkpoint_config
from rgm_ray.models.domain import DomainConfig, train_domain_classifier
from rgm_ray.runtime import autodetect_device, set_torch_threads
from rgm_ray.tracking import Tracker

DOMAIN_DIR = "domain"
# Quick default domain network when none is given (~4 min on 2 loaded CPU cores, ~75 % test accuracy
# on Fashion-MNIST): enough for relative comparisons; pass --domain-checkpoint for a better one.
DEFAULT_DOMAIN_EPOCHS = 1
DEFAULT_DOMAIN_TRAIN_IMAGES = 12800


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="IS/FID/KID/precision-recall of sample sets vs real data, on equal-size sets",
        description="Score each --set against real images over --runs runs of exactly --k images per set, plus "
        "a held-out real 'reference' row, with torch-fidelity. Writes metrics.json, table.md (thesis Table "
        "6.3 shape) and sample grids to --out.")
    p.add_argument("--real", required=True, metavar="DATASET_OR_DIR",
                   help=f"a dataset name ({', '.join(DATASET_NAMES)}: its test split is the real set, its train "
                   "split the reference) or a sample-set directory (the reference is then a disjoint k-subset of it)")
    p.add_argument("--root", default=None, help="dataset root for --real DATASET")
    p.add_argument("--set", dest="sets", action="append", required=True, metavar="NAME=DIR",
                   help="a sample set to score (repeatable); rows with a 'copies' column are expanded by it")
    p.add_argument("--k", type=int, required=True, help="images per set and run (the same for every set)")
    p.add_argument("--runs", type=int, default=3, help="runs on fresh random subsets (default: 3)")
    p.add_argument("--features", choices=EXTRACTOR_KINDS, default="domain",
                   help="domain: the project's ResNet (offline; not comparable to papers); inception: "
                   "torch-fidelity's Inception-V3 from --inception-weights (default: domain)")
    p.add_argument("--domain-checkpoint", default=None,
                   help="domain ResNet checkpoint directory (default: train one into OUT/domain, or reuse it)")
    p.add_argument("--domain-epochs", type=int, default=DEFAULT_DOMAIN_EPOCHS,
                   help="epochs when training the default domain network")
    p.add_argument("--domain-train-images", type=int, default=DEFAULT_DOMAIN_TRAIN_IMAGES,
                   help="training images for the default domain network")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="torch-fidelity's Inception-V3 weights file (never downloaded here)")
    p.add_argument("--uniform-k", action="store_true",
                   help="cut sets larger than k to a uniform random k-subset per run (the equal-size 'no "
                   "importance sampling' baseline); without it every set must hold exactly k images")
    p.add_argument("--weighted-fid", action="store_true",
                   help="also report LFIW's importance-weighted FID (and its ESS) for sets with log_weight")
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS,
                   help=f"KID subsets per run (torch-fidelity's default: {KID_SUBSETS}); each has min(1000, k) images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    add_common(p)
    p.set_defaults(handler=run_evaluate)


def _extractor_spec(args: argparse.Namespace, out: Path, tracker: Tracker) -> ExtractorSpec:
    """The feature extractor; trains (or reuses) OUT/domain when no domain checkpoint is given."""
    if args.features == "inception":
        if args.domain_checkpoint:
            raise UserError("--domain-checkpoint only applies to --features domain")
        return inception_spec(args.inception_weights)
    if args.inception_weights:
        raise UserError("--inception-weights only applies to --features inception")
    if args.domain_checkpoint:
        return domain_spec(args.domain_checkpoint)
    checkpoint = out / DOMAIN_DIR
    if (checkpoint / CONFIG_FILE).is_file():
        trained_on = read_checkpoint_config(checkpoint).get("dataset")
        if trained_on != args.real:
            raise UserError(f"{checkpoint} holds a domain network for {trained_on!r}, not {args.real!r}; "
                            "remove it or pass --domain-checkpoint")
        return domain_spec(checkpoint)
    if args.real not in DATASET_NAMES:
        raise UserError("--real is a sample-set directory: pass --domain-checkpoint (a domain network is only "
                        "trained automatically from a labelled dataset name)")
    config = DomainConfig(epochs=args.domain_epochs, train_images=args.domain_train_images, seed=args.seed)
    train_domain_classifier(load_dataset(args.real, "train", args.root), load_dataset(args.real, "test", args.root),
                            config, checkpoint, tracker=tracker, progress=progress_bar)
    return domain_spec(checkpoint)


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    config = EvalConfig(k=args.k, runs=args.runs, seed=args.seed, uniform_k=args.uniform_k,
                        weighted_fid=args.weighted_fid, kid_subsets=args.kid_subsets)
    real, reference = load_real(args.real, args.root)
    sets = [load_sample_set(*parse_set_argument(text)) for text in args.sets]
    validate_sets(real, reference, sets, config)  # fail before any training or extraction
    set_torch_threads(args.threads)
    device = autodetect_device(args.device)
    params = {"real": args.real, "sets": dict(parse_set_argument(t) for t in args.sets), "k": args.k,
              "runs": args.runs, "features": args.features, "uniform_k": args.uniform_k,
              "weighted_fid": args.weighted_fid, "kid_subsets": args.kid_subsets, "seed": args.seed,
              "out": str(out)}
    with tracked_run(args, "evaluate", params) as tracker:
        spec = _extractor_spec(args, out, tracker)
        featurizer = FidelityFeaturizer(spec, batch_size=args.batch_size, device=device)
        evaluation = evaluate(real, reference, sets, featurizer, config, extractor=spec.to_dict(),
                              progress=progress)
        written = write_outputs(out, evaluation, real, sets)
        tracker.log_params({"extractor": spec.description})
        for run in range(config.runs):
            tracker.log_metrics(mlflow_run_metrics(evaluation, run), step=run)
        tracker.log_metrics(mlflow_metrics(evaluation))
        for path in written:
            tracker.log_artifact(path)
    fids = ", ".join(f"{row.name} {row.mean()[KEY_FID]:.3g}" for row in evaluation.rows)
    return {"out": str(out), "extractor": spec.to_dict(), "files": [str(p) for p in written],
            "rows": {row.name: {"mean": row.mean(), "std": row.std()} for row in evaluation.rows},
            "message": f"scored {len(sets)} set(s) on k={config.k} x {config.runs} run(s) with {args.features} "
                       f"features; FID: {fids}; table: {out / TABLE_MD}"}
