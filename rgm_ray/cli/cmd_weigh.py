"""``rgm weigh``: out-of-fold, calibrated importance log-weights for a generated sample set."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rgm_ray.cli.common import (add_cluster_args, add_common, cluster_options, command_line, output_dir,
                                progress_bar, tracked_run)
from rgm_ray.weigh.backbones import BACKBONES
from rgm_ray.weigh.classifier import HeadConfig
from rgm_ray.weigh.scoring import ScoringOptions
from rgm_ray.weigh.stage import BASELINES, CALIBRATIONS, WeighConfig, WeighResult, WeighSpec, weigh


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weigh", help="weigh generated samples with a calibrated real-vs-generated classifier",
                            description="Train a real(1)-vs-generated(0) classifier with K-fold cross-fitting, "
                            "calibrate it by temperature scaling on held-out data, and score every sample on Ray "
                            "Data: log_weight = calibrated logit of the fold model that never saw the sample.")
    parser.add_argument("--real", required=True,
                        help="a dataset name (then its train split is the real data) or a sample-set directory; a "
                        "dataset name always means the dataset, even if a directory of that name exists (write "
                        "./NAME for the directory)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", help="generated sample-set directory to weigh")
    source.add_argument("--baseline", choices=BASELINES,
                        help="sanity baseline: weigh uniform-noise images against the real data")
    parser.add_argument("--num-noise", type=int, default=10000, help="images in the noise baseline")
    parser.add_argument("--out", required=True, type=output_dir, help="output directory (weighted/ + diagnostics)")
    parser.add_argument("--root", default=None, help="dataset root when --real is a dataset name")
    parser.add_argument("--backbone", choices=BACKBONES, default="domain")
    parser.add_argument("--domain-checkpoint", default=None,
                        help="domain ResNet checkpoint (default: train a quick one into OUT/domain/)")
    parser.add_argument("--inception-weights", default=None, help="torch-fidelity Inception-V3 weights file")
    parser.add_argument("--checkpoint", default=None,
                        help="GAN checkpoint directory whose discriminator scores (--backbone gan-discriminator: "
                        "log_weight = its logit / the fitted temperature; no classifier is trained)")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds K (default 2)")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="temperature")
    parser.add_argument("--calibration-fraction", type=float, default=0.2,
                        help="share of the training folds held out to pick the epoch and fit the temperature")
    parser.add_argument("--max-per-class", type=int, default=None, help="cap on fitting images per class")
    defaults = HeadConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="classifier epochs")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="MLP head width (thesis: 1000)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="device for fitting on the driver (default: cuda if any)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per scoring batch")
    add_cluster_args(parser, cpus_per_worker=0.5)  # Ray Data actors must leave CPUs for the read tasks
    parser.add_argument("--blocks", type=int, default=None,
                        help="blocks to repartition into before scoring (default: 4 per worker; 0: keep Ray "
                        "Data's read blocks, for pools much larger than the object store)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/weighted")
    add_common(parser)
    parser.set_defaults(handler=run_weigh)


def run_weigh(args: argparse.Namespace) -> WeighResult:
    head = HeadConfig(hidden=args.hidden, epochs=args.epochs, lr=args.lr)
    config = WeighConfig(backbone=args.backbone, domain_checkpoint=args.domain_checkpoint,
                         inception_weights=args.inception_weights, gan_checkpoint=args.checkpoint,
                         folds=args.folds, calibration=args.calibration,
                         calibration_fraction=args.calibration_fraction, max_per_class=args.max_per_class,
                         head=head, seed=args.seed)
    spec = WeighSpec(real=args.real, out=args.out, samples=args.samples, baseline=args.baseline,
                     num_noise=args.num_noise, root=args.root, config=config,
                     scoring=ScoringOptions(batch_size=args.batch_size, blocks=args.blocks), device=args.device)
    cluster = cluster_options(args)
    params = {**asdict(config), **asdict(spec.scoring), **asdict(cluster), "real": args.real, "samples": args.samples,
              "baseline": args.baseline, "out": args.out}
    with tracked_run(args, f"weigh-{args.backbone}", params) as tracker:
        return weigh(spec, cluster, overwrite=args.overwrite, tracker=tracker, progress=progress_bar,
                     command=command_line())
