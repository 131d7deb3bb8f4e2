"""``rgm evaluate``: IS / FID / KID / precision-recall of sample sets against real data (thesis Table 6.3)."""

from __future__ import annotations

import argparse

from rgm_ray.cli.common import add_common, output_dir, positive_int, progress, progress_bar, tracked_run
from rgm_ray.data import DATASET_NAMES
from rgm_ray.evaluate.features import EXTRACTOR_KINDS
from rgm_ray.evaluate.inputs import parse_set_argument
from rgm_ray.evaluate.metrics import KID_SUBSETS
from rgm_ray.evaluate.protocol import EvalConfig
from rgm_ray.evaluate.stage import EvaluateResult, EvaluateSpec, evaluate_sets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="IS/FID/KID/precision-recall of sample sets vs real data, on equal-size sets",
        description="Score each --set against real images over --runs runs of exactly --k images per set, plus "
        "a held-out real 'reference' row, with torch-fidelity. Writes metrics.json, table.md (thesis Table "
        "6.3 shape) and sample grids to --out.")
    p.add_argument("--real", required=True, metavar="DATASET_OR_DIR",
                   help=f"a dataset name ({', '.join(DATASET_NAMES)}: its test split is the real set, its train "
                   "split the reference) or a sample-set directory (the reference is then a disjoint k-subset of it); "
                   "a dataset name always means the dataset, even if a directory of that name exists (write "
                   "./NAME for the directory)")
    p.add_argument("--root", default=None, help="dataset root for --real DATASET")
    p.add_argument("--set", dest="sets", action="append", required=True, metavar="NAME=DIR",
                   help="a sample set to score (repeatable); rows with a 'copies' column are expanded by it")
    p.add_argument("--k", type=int, required=True, help="images per set and run (the same for every set)")
    p.add_argument("--runs", type=int, default=3, help="runs on fresh random subsets (default: 3)")
    p.add_argument("--features", choices=EXTRACTOR_KINDS, default="domain",
                   help="domain: the project's ResNet (offline; not comparable to papers); inception: "
                   "torch-fidelity's Inception-V3 from --inception-weights (default: domain)")
    p.add_argument("--domain-checkpoint", default=None,
                   help="domain ResNet checkpoint directory (default: train a quick one, "
                   "rgm_ray.models.domain.DEFAULT_DOMAIN, into OUT/domain, or reuse it)")
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
    p.add_argument("--out", required=True, type=output_dir, help="output directory")
    p.add_argument("--batch-size", type=int, default=512, help="feature-extraction batch size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    add_common(p)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> EvaluateResult:
    config = EvalConfig(k=args.k, runs=args.runs, seed=args.seed, uniform_k=args.uniform_k,
                        weighted_fid=args.weighted_fid, kid_subsets=args.kid_subsets)
    spec = EvaluateSpec(real=args.real, sets=dict(parse_set_argument(t) for t in args.sets), out=args.out,
                        config=config, root=args.root, features=args.features,
                        domain_checkpoint=args.domain_checkpoint, inception_weights=args.inception_weights,
                        batch_size=args.batch_size, device=args.device, threads=args.threads)
    params = {"real": args.real, "sets": {k: str(v) for k, v in spec.sets.items()}, "k": args.k, "runs": args.runs,
              "features": args.features, "uniform_k": args.uniform_k, "weighted_fid": args.weighted_fid,
              "kid_subsets": args.kid_subsets, "seed": args.seed, "out": args.out}
    with tracked_run(args, "evaluate", params) as tracker:
        return evaluate_sets(spec, tracker=tracker, progress=progress, progress_bar=progress_bar)
