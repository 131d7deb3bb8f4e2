"""``rgm train {vae,pixelcnn}``: maximum-likelihood training of a generator."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rgm_ray.cli.common import UserError, add_common, progress_bar, tracked_run
from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.models.checkpoint import build_model
from rgm_ray.models.training import CHECKPOINT_DIR, KEY_TEST_BPD, SAMPLES_PNG, train
from rgm_ray.presets import PRESETS, load_preset, section
from rgm_ray.runtime import autodetect_device, set_torch_threads

MODELS = {"pixelcnn": ("pixelcnn", "train_pixelcnn", "pixelcnnpp"), "vae": ("vae", "train_vae", "vae")}


def add_preset_args(parser: argparse.ArgumentParser, default: str = "demo") -> None:
    parser.add_argument("--preset", default=default, choices=tuple(PRESETS), help=f"(default: {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a preset field, e.g. --set pixelcnn.nr_filters=64 (repeatable)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a generator (PixelCNN++ or VAE) and checkpoint it")
    parser.add_argument("model", choices=tuple(MODELS))
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=None, help="(default: the preset's)")
    parser.add_argument("--root", default=None, help="dataset root (default: the preset's / system path)")
    parser.add_argument("--out", required=True, help="run directory (checkpoint/, samples.png, metrics.json)")
    add_preset_args(parser)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    add_common(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    model_section, train_section, _ = MODELS[args.model]
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    for flag, key in (("epochs", "epochs"), ("max_steps", "max_steps"), ("lr", "lr"),
                      ("batch_size", "batch_size"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"{train_section}.{key}={getattr(args, flag)}")
    preset = load_preset(args.preset, overrides)
    data = section(preset, "data")
    model_config = section(preset, model_section)
    train_config = section(preset, train_section)
    out = Path(args.out)
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    set_torch_threads(args.threads)
    device = autodetect_device(args.device)
    train_split = load_dataset(data["dataset"], "train", data["root"])
    test_split = load_dataset(data["dataset"], "test", data["root"])
    torch.manual_seed(train_config.seed)  # the initial weights are part of the run's seed
    model = build_model(MODELS[args.model][2], model_config.to_dict())
    meta = {"dataset": data["dataset"], "preset": args.preset}
    params = {"model": args.model, **meta, "model_config": model_config.to_dict(),
              "train_config": asdict(train_config), "device": str(device), "out": str(out)}
    with tracked_run(args, f"train-{args.model}", params) as tracker:
        try:
            summary = train(model, train_split.images, test_split.images, train_config, out, meta=meta,
                            tracker=tracker, device=device, progress=progress_bar)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    summary.update(out=str(out), checkpoint=str(out / CHECKPOINT_DIR), samples=str(out / SAMPLES_PNG))
    summary["message"] = (f"trained {args.model} for {summary['steps']} steps "
                          f"({summary['train_seconds']:.0f} s): test {summary.get(KEY_TEST_BPD, float('nan')):.3f} "
                          f"bits/dim; checkpoint {out / CHECKPOINT_DIR}")
    return summary
