"""``rgm ssl``: one semi-supervised classifier (CE on few labels + w * semantic loss on unlabelled images)."""

from __future__ import annotations

import argparse
from typing import Any

from rgm_ray.cli.common import add_common, output_dir, positive_int, progress_bar, tracked_run, value_type
from rgm_ray.data import DATASET_NAMES
from rgm_ray.runtime import autodetect_device, set_torch_threads
from rgm_ray.ssl.sources import SOURCE_SYNTAX, parse_source
from rgm_ray.ssl.stage import METRICS_JSON, run_ssl
from rgm_ray.ssl.trainer import ALL_LABELS, KEY_BEST_EPOCH, KEY_TEST_ACC, KEY_VAL_ACC, SSLConfig, parse_labels

DEFAULTS = SSLConfig()


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ssl", help="train a semi-supervised ResNet: few real labels + semantic loss on unlabelled images",
        description="Batches are half labelled (a class-balanced subset of the real training split) and half "
                    "unlabelled. Selection uses a validation split carved from the training split; the test "
                    "split is evaluated once at the end.")
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="fashion-mnist")
    parser.add_argument("--root", default=None, help="dataset root (default: the system path)")
    parser.add_argument("--labels", default=ALL_LABELS, type=value_type(parse_labels), metavar="N|all",
                        help="size of the class-balanced labelled subset (default: all)")
    parser.add_argument("--unlabeled", default="none", type=value_type(parse_source), metavar="SRC",
                        help=f"unlabelled images: {SOURCE_SYNTAX} (DIR honours 'copies'; weighted:DIR weighs "
                             "each image's SL term by its self-normalised importance weight) (default: none)")
    parser.add_argument("--unlabeled-name", default=None, help="label of the source in reports (default: derived)")
    parser.add_argument("--sl-weight", type=float, default=DEFAULTS.sl_weight,
                        help=f"semantic-loss weight w (default: {DEFAULTS.sl_weight})")
    parser.add_argument("--sl-on-labeled", action="store_true", help="also apply the SL term to the labelled half")
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="(default: ceil(training pool / half batch): one pass of the pool's labels)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="half labelled, half unlabelled")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--patience", type=int, default=None, help="early stopping: epochs without a better val acc")
    parser.add_argument("--val-size", type=int, default=None, help="validation images (default: min(5000, pool/10))")
    parser.add_argument("--train-subset", type=int, default=None, metavar="M",
                        help="use a fixed random subset of M training images (quick runs)")
    parser.add_argument("--test-subset", type=int, default=None, metavar="T",
                        help="evaluate on a fixed random subset of T test images (quick runs)")
    parser.add_argument("--weight-alpha", type=float, default=DEFAULTS.weight_alpha,
                        help="flatten importance weights to w^alpha for weighted:DIR (default: 1)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--out", required=True, type=output_dir, help="run directory (metrics.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json in --out")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    add_common(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = SSLConfig(labels=args.labels, sl_weight=args.sl_weight, sl_on_labeled=args.sl_on_labeled,
                       epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                       lr=args.lr, patience=args.patience, val_size=args.val_size, train_subset=args.train_subset,
                       test_subset=args.test_subset, weight_alpha=args.weight_alpha, seed=args.seed)
    source = args.unlabeled
    name = args.unlabeled_name or source.default_name
    set_torch_threads(args.threads)
    device = autodetect_device(args.device)
    params = {"dataset": args.dataset, "unlabeled": str(source), "unlabeled_name": name, **config.to_dict(),
              "device": str(device), "out": args.out}
    with tracked_run(args, f"ssl-{name}", params) as tracker:
        summary = run_ssl(args.dataset, source, config, root=args.root, source_name=name, out=args.out,
                          overwrite=args.overwrite, device=device, tracker=tracker, progress=progress_bar)
    summary["mlflow_run_id"] = tracker.run_id
    summary["message"] = (
        f"ssl {args.dataset} labels={config.labels_name} unlabeled={name} w={config.sl_weight:g}: "
        f"test acc {100 * summary[KEY_TEST_ACC]:.2f} % (val {100 * summary[KEY_VAL_ACC]:.2f} %, best epoch "
        f"{summary[KEY_BEST_EPOCH]}/{summary['epochs_run']}, {summary['steps']} steps, "
        f"{summary['train_seconds']:.0f} s); {args.out}/{METRICS_JSON}")
    return summary
