"""``rgm audit``: class balance, memorisation and diversity of sample sets against real data."""

from __future__ import annotations

import argparse

from rgm_ray.audit.stage import AuditConfig, AuditResult, AuditSpec, audit_sets
from rgm_ray.cli.common import add_common, output_dir, positive_int, progress, tracked_run
from rgm_ray.data import DATASET_NAMES
from rgm_ray.evaluate.inputs import parse_set_argument

DEFAULTS = AuditConfig()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="class balance, memorisation and diversity of sample sets vs real data",
        description="Audit each --set against a dataset: predicted-class histogram distances to the test split, "
        "nearest training neighbours in pixel and domain-feature space (near-copy fraction below a threshold "
        "calibrated on the test split), the birthday-paradox support estimate, duplicates, density/coverage and "
        "precision/recall. Writes audit.json, table.md and figures to --out.")
    p.add_argument("--real", required=True, choices=DATASET_NAMES,
                   help="the dataset: its test split is the reference row and calibrates the thresholds, its "
                   "train split is the memorisation bank")
    p.add_argument("--root", default=None, help="dataset root")
    p.add_argument("--set", dest="sets", action="append", required=True, metavar="NAME=DIR",
                   help="a sample set to audit (repeatable); rows with a 'copies' column are expanded by it")
    p.add_argument("--compare", action="append", default=None, metavar="NAME=BASELINE",
                   help="report whether set NAME's near-copy fraction rose above set BASELINE's, e.g. "
                   "--compare resampled=plain (repeatable; default: every other set vs the first --set)")
    p.add_argument("--domain-checkpoint", required=True, metavar="DIR", help="domain ResNet checkpoint directory")
    p.add_argument("--out", required=True, type=output_dir, help="output directory")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--bootstrap", type=positive_int, default=DEFAULTS.bootstrap,
                   help=f"bootstrap resamples per interval (default: {DEFAULTS.bootstrap})")
    p.add_argument("--nn-k", type=positive_int, default=DEFAULTS.nn_k,
                   help=f"nearest training neighbours per sample (default: {DEFAULTS.nn_k})")
    p.add_argument("--threshold-quantile", type=float, default=DEFAULTS.threshold_quantile,
                   help="near-copy / duplicate threshold: this quantile of the test split's nearest-train "
                   f"distances (default: {DEFAULTS.threshold_quantile})")
    p.add_argument("--birthday-batch", type=positive_int, default=DEFAULTS.birthday_batch,
                   help=f"images per birthday batch, s (default: {DEFAULTS.birthday_batch})")
    p.add_argument("--birthday-batches", type=positive_int, default=DEFAULTS.birthday_batches,
                   help=f"birthday batches (default: {DEFAULTS.birthday_batches})")
    p.add_argument("--train-bank", type=positive_int, default=None,
                   help="first N train images as the memorisation bank (default: the whole split)")
    p.add_argument("--density-k", type=positive_int, default=DEFAULTS.density_k,
                   help=f"density/coverage neighbourhood (default: {DEFAULTS.density_k})")
    p.add_argument("--max-images", type=positive_int, default=DEFAULTS.max_images,
                   help=f"images audited per set and of the test split, a seeded subset beyond (default: "
                   f"{DEFAULTS.max_images})")
    p.add_argument("--batch-size", type=positive_int, default=512, help="feature-extraction batch size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    add_common(p)
    p.set_defaults(handler=run_audit)


def _comparison(text: str) -> tuple[str, str]:
    """``"NAME=BASELINE"`` -> ``(NAME, BASELINE)``."""
    name, sep, baseline = text.partition("=")
    if not sep or not name or not baseline:
        raise ValueError(f"--compare {text!r}: expected NAME=BASELINE, e.g. --compare resampled=plain")
    return name, baseline


def run_audit(args: argparse.Namespace) -> AuditResult:
    config = AuditConfig(seed=args.seed, bootstrap=args.bootstrap, nn_k=args.nn_k,
                         threshold_quantile=args.threshold_quantile, birthday_batch=args.birthday_batch,
                         birthday_batches=args.birthday_batches, train_bank=args.train_bank,
                         density_k=args.density_k, max_images=args.max_images)
    sets = [parse_set_argument(text) for text in args.sets]
    names = [name for name, _ in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"--set names must be unique, got {', '.join(names)}")
    spec = AuditSpec(real=args.real, sets={name: str(d) for name, d in sets}, out=args.out,
                     domain_checkpoint=args.domain_checkpoint, config=config,
                     compare=None if args.compare is None else dict(_comparison(text) for text in args.compare),
                     root=args.root, batch_size=args.batch_size, device=args.device, threads=args.threads)
    params = {"real": args.real, "sets": spec.sets, "compare": spec.comparisons,
              "domain_checkpoint": args.domain_checkpoint, "out": args.out, **vars(config)}
    with tracked_run(args, "audit", params) as tracker:
        return audit_sets(spec, tracker=tracker, progress=progress)
