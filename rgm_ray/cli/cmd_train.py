"""``rgm train {vae,pixelcnn,gan}``: train a generator (maximum likelihood, or adversarial for the GAN)."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict
from pathlib import Path

from rgm_ray.cli.common import (UserError, add_common, add_preset_args, output_dir, positive_int, progress_bar,
                                tracked_run)
from rgm_ray.data import DATASET_NAMES
from rgm_ray.models.registry import GENERATOR_NAMES, get_family
from rgm_ray.models.train_generator import TrainResult, TrainSpec, train_generator
from rgm_ray.pipeline.presets import load_preset, section
from rgm_ray.runtime import autodetect_device, set_torch_threads
from rgm_ray.store.lock import output_lock


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a generator and checkpoint it")
    parser.add_argument("model", choices=GENERATOR_NAMES)
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=None, help="(default: the preset's)")
    parser.add_argument("--root", default=None, help="dataset root (default: the preset's / system path)")
    parser.add_argument("--out", required=True, type=output_dir,
                        help="run directory (checkpoint/, samples.png, metrics.json)")
    add_preset_args(parser)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    parser.add_argument("--register-model", default=None, metavar="NAME",
                        help="register the checkpoint's MLflow model (logged in every tracked run) as NAME")
    add_common(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> TrainResult:
    if args.register_model and args.no_mlflow:
        raise UserError("--register-model registers the run's MLflow model: drop --no-mlflow")
    family = get_family(args.model)
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.root:
        overrides.append(f"data.root={args.root}")
    for flag, key in (("epochs", "epochs"), ("max_steps", "max_steps"), ("lr", "lr"),
                      ("batch_size", "batch_size"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"{family.train_section}.{key}={getattr(args, flag)}")
    preset = load_preset(args.preset, overrides)
    data = section(preset, "data")
    out = Path(args.out)
    with output_lock(out):  # from the --overwrite removal to the end of training
        if args.overwrite and out.exists():
            shutil.rmtree(out)
        set_torch_threads(args.threads)
        device = autodetect_device(args.device)
        spec = TrainSpec(family=family.name, dataset=data["dataset"], root=data["root"], out=str(out),
                         model=section(preset, family.preset_section), train=section(preset, family.train_section),
                         preset=args.preset)
        params = {"model": family.name, "dataset": spec.dataset, "preset": args.preset,
                  "model_config": spec.model.to_dict(), "train_config": asdict(spec.train), "device": str(device),
                  "out": str(out)}
        with tracked_run(args, f"train-{family.name}", params) as tracker:
            try:
                return train_generator(spec, tracker=tracker, device=device, progress=progress_bar,
                                       register_model=args.register_model)
            except ValueError as exc:
                raise UserError(str(exc)) from exc
