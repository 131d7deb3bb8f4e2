"""The pipeline's stage table: for each stage, where its output lives, whether it is complete, and how
to run it, by calling the stage's own Python entry point with the preset's section as its config.

Every stage here is a few lines of wiring; the work and the completeness rules live with each stage's
code (``generate.is_complete``, ``weigh.is_complete``, ...), and the runner alone skips, times and
tracks. A stage's ``run`` returns the :class:`~rgm_ray.results.StageResult` of its entry point.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rgm_ray import audit, evaluate, generate, resample, tune, weigh
from rgm_ray.audit import AuditSpec, audit_sets
from rgm_ray.data import load_dataset
from rgm_ray.evaluate import EvaluateSpec, evaluate_sets
from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.models.checkpoint import CONFIG_FILE, read_checkpoint_config
from rgm_ray.models.domain import ensure_domain
from rgm_ray.models.gan_training import GANTrainConfig
from rgm_ray.models.registry import THESIS_GENERATOR, get_family
from rgm_ray.models.train_generator import TrainResult, TrainSpec, log_training, train_generator
from rgm_ray.models.training import CHECKPOINT_DIR, METRICS_JSON
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.presets import ASSETS
from rgm_ray.report.build import build_report
from rgm_ray.resample import ResampleSpec, resample_sample_set
from rgm_ray.resample.summary import KEY_DRAWS
from rgm_ray.results import StageResult
from rgm_ray.store import ManifestError, SampleSet, export_dataset
from rgm_ray.tracking import Tracker
from rgm_ray.tune.config import load_sweep_config, sweep_config_path
from rgm_ray.tune.sweep import run_sweep
from rgm_ray.weigh import WeighSpec
from rgm_ray.weigh.backbones import GAN_DISCRIMINATOR
from rgm_ray.weigh.stage import SCORING_CLUSTER
from rgm_ray.weigh.variants import WeighVariant, weigh_variants

SPLITS = ("train", "test")
DOMAIN_ASSET = "domain"  # rgm_ray/assets/<pretrained>/domain: the committed domain network, beside the generators


@dataclass(frozen=True)
class Stage:
    name: str
    out: Callable[[Context], Path]
    is_complete: Callable[[Context], bool]
    run: Callable[[Context, Tracker], StageResult]
    # What to record for a complete output that ``pipeline.json`` does not describe (a run killed
    # between a stage's last write and the state file): facts read back from the output itself.
    describe: Callable[[Context], dict[str, Any]] | None = None

    def recorded_facts(self, ctx: Context) -> dict[str, Any]:
        return self.describe(ctx) if self.describe else {"out": str(self.out(ctx))}


def _logged(spec: Any, tracker: Tracker) -> Any:
    """``spec``, after logging it as the stage run's params."""
    tracker.log_params(dataclasses.asdict(spec))
    return spec


def _is_set(path: Path) -> bool:
    try:
        SampleSet(path)
    except (ManifestError, FileNotFoundError):
        return False
    return True


# --- data and models -----------------------------------------------------------------------------------


def _data_out(ctx: Context) -> Path:
    return ctx.path("data")


def _run_data(ctx: Context, tracker: Tracker) -> StageResult:
    data = ctx.config("data")
    for split in SPLITS:
        path = ctx.path("data", f"real_{split}")
        if not _is_set(path):
            export_dataset(load_dataset(data["dataset"], split, data["root"]), path, overwrite=path.exists())
    tracker.log_params({"dataset": data["dataset"], "root": data["root"]})
    return StageResult(out=str(_data_out(ctx)))


def _run_domain(ctx: Context, tracker: Tracker) -> StageResult:
    """Copy the preset's committed domain network (``rgm_ray/assets/<pretrained>/domain``) when the run
    uses committed checkpoints and it was trained with the preset's ``domain`` section; train otherwise."""
    data, pretrained = ctx.config("data"), ctx.config("pipeline").pretrained
    committed = ASSETS / pretrained / DOMAIN_ASSET / CHECKPOINT_DIR if pretrained and not ctx.retrain else None
    domain = ensure_domain(data["dataset"], ctx.path("domain"), ctx.config("domain"), root=data["root"],
                           committed=committed, tracker=tracker, progress=ctx.progress_bar)
    copied = {"pretrained": pretrained} if domain.copied_from is not None else {}
    tracker.log_params({"dataset": data["dataset"], **dataclasses.asdict(ctx.config("domain")), **copied})
    tracker.log_metrics({k: v for k, v in domain.metrics.items() if isinstance(v, float)})
    origin = _origin(ctx, DOMAIN_ASSET) if domain.copied_from is not None else "trained in this run"
    return StageResult(out=str(domain.path), metrics={**domain.metrics, "origin": origin})


def _domain_complete(ctx: Context) -> bool:
    return (ctx.path("domain") / CONFIG_FILE).is_file()


def _describe_domain(ctx: Context) -> dict[str, Any]:
    return {"out": str(ctx.path("domain")), **read_checkpoint_config(ctx.path("domain"))["metrics"]}


def _train_out(name: str) -> Callable[[Context], Path]:
    return lambda ctx: ctx.path("models", name)


def _train_complete(name: str) -> Callable[[Context], bool]:
    def check(ctx: Context) -> bool:
        run = ctx.path("models", name)
        return (run / METRICS_JSON).is_file() and (run / CHECKPOINT_DIR / CONFIG_FILE).is_file()
    return check


def _origin(ctx: Context, name: str) -> str:
    """Where generator (or domain network) ``name``'s checkpoint comes from in this run (the report says it)."""
    pretrained = ctx.config("pipeline").pretrained
    if pretrained and not ctx.retrain:
        return f"committed checkpoint rgm_ray/assets/{pretrained}/{name} (see its TRAINING.md)"
    return "trained in this run"


def _finished_training(ctx: Context, name: str) -> TrainResult:
    """The result of generator ``name``'s finished run directory, read back from its ``metrics.json``."""
    out = ctx.path("models", name)
    metrics = json.loads((out / METRICS_JSON).read_text())
    return TrainResult(out=str(out), metrics=metrics, family=name, run=str(out),
                       checkpoint=str(out / CHECKPOINT_DIR), origin=_origin(ctx, name))


def _describe_train(name: str) -> Callable[[Context], dict[str, Any]]:
    return lambda ctx: _finished_training(ctx, name).to_dict()


def _describe_resample(name: str) -> Callable[[Context], dict[str, Any]]:
    def describe(ctx: Context) -> dict[str, Any]:
        out = ctx.path("resampled", name)
        return {**SampleSet(out).manifest.info[resample.stage.INFO_SUMMARY], "out": str(out)}
    return describe


def _run_train(name: str) -> Callable[[Context, Tracker], StageResult]:
    """Train generator ``name``, or copy the preset's committed checkpoint of it."""
    def run(ctx: Context, tracker: Tracker) -> StageResult:
        out = ctx.path("models", name)
        family = get_family(name)
        pretrained = ctx.config("pipeline").pretrained
        if pretrained and not ctx.retrain:
            if out.exists():
                shutil.rmtree(out)  # an unfinished copy
            shutil.copytree(ASSETS / pretrained / name, out)
            result = _finished_training(ctx, name)
            tracker.log_params({"pretrained": pretrained})
            log_training(tracker, result, register_model=_registered_name(ctx, name), with_config=True)
            return result
        data = ctx.config("data")
        train = ctx.config(family.train_section)
        if isinstance(train, GANTrainConfig) and train.fid_domain_checkpoint is None:  # its FID: this run's domain
            train = dataclasses.replace(train, fid_domain_checkpoint=str(ctx.path("domain")))
        spec = TrainSpec(family=family.name, dataset=data["dataset"], root=data["root"], out=str(out),
                         model=ctx.config(family.preset_section), train=train, preset=ctx.preset_name)
        return train_generator(_logged(spec, tracker), tracker=tracker, origin=_origin(ctx, name),
                               register_model=_registered_name(ctx, name), progress=ctx.progress_bar)
    return run


def _registered_name(ctx: Context, name: str) -> str | None:
    """``<prefix>-<generator>`` in the MLflow model registry, with ``--register-models PREFIX``."""
    return f"{ctx.register_models}-{name}" if ctx.register_models else None


# --- samples, weights, resampling ---------------------------------------------------------------------


def _generate_spec(ctx: Context, name: str) -> GenerateSpec:
    config = ctx.config("generate")
    return GenerateSpec(checkpoint=str(ctx.path("models", name)), out=str(ctx.path("samples", name)),
                        num_samples=config.num_samples, shard_size=config.shard_size, seed=config.seed,
                        sampler=config.sampler_for(name), batch_size=config.batch_size)


def _run_generate(name: str) -> Callable[[Context, Tracker], StageResult]:
    return lambda ctx, tracker: generate_sample_set(_logged(_generate_spec(ctx, name), tracker), ctx.cluster,
                                                    tracker=tracker, progress=ctx.progress_bar)


def _weigh_spec(ctx: Context, variant: WeighVariant) -> WeighSpec:
    config = ctx.config("weigh")
    if variant.backbone == GAN_DISCRIMINATOR:  # the GAN's own critic: no classifier backbone to point at
        config = dataclasses.replace(config, backbone=GAN_DISCRIMINATOR, domain_checkpoint=None,
                                     inception_weights=None,
                                     gan_checkpoint=str(ctx.path("models", variant.generator, CHECKPOINT_DIR)))
    elif ctx.inception_weights:
        config = dataclasses.replace(config, backbone="inception", inception_weights=ctx.inception_weights)
    elif config.backbone == "domain":
        config = dataclasses.replace(config, domain_checkpoint=str(ctx.path("domain")))
    data = ctx.config("data")
    return WeighSpec(real=data["dataset"], root=data["root"], samples=str(ctx.path("samples", variant.generator)),
                     out=str(ctx.path("weights", variant.name)), config=config)


def _run_weigh(variant: WeighVariant) -> Callable[[Context, Tracker], StageResult]:
    # Ray Data scorers take fractional CPUs so the read tasks keep one (see weigh.scoring)
    return lambda ctx, tracker: weigh.weigh(
        _logged(_weigh_spec(ctx, variant), tracker),
        dataclasses.replace(ctx.cluster, cpus_per_worker=SCORING_CLUSTER.cpus_per_worker), tracker=tracker,
        progress=ctx.progress_bar)


def _resampled_name(name: str, method: str | None) -> str:
    """``resampled/<name>`` for the resample section's own method, ``<name>_<method>`` for a compared one."""
    return name if method is None else f"{name}_{method}"


def _resample_spec(ctx: Context, name: str, method: str | None = None) -> ResampleSpec:
    config = ctx.config("resample")
    if method is not None:
        options = ctx.config("pipeline").method_options.get(method, {})
        config = dataclasses.replace(config, method=method, **options)
    return ResampleSpec(samples=str(ctx.path("weights", name, weigh.stage.WEIGHTED_DIR)),
                        out=str(ctx.path("resampled", _resampled_name(name, method))), config=config)


def _run_resample(name: str, method: str | None = None) -> Callable[[Context, Tracker], StageResult]:
    # a finished set from other settings is replaced, atomically, once the new draw is written
    return lambda ctx, tracker: resample_sample_set(_logged(_resample_spec(ctx, name, method), tracker),
                                                    ctx.cluster, overwrite=True, tracker=tracker,
                                                    progress=ctx.progress_bar)


def _resample_stage(name: str, method: str | None = None) -> Stage:
    out = _resampled_name(name, method)
    return Stage(f"resample_{out}", lambda c: c.path("resampled", out),
                 lambda c: resample.is_complete(_resample_spec(c, name, method)), _run_resample(name, method),
                 _describe_resample(out))


# --- evaluation, SSL, report --------------------------------------------------------------------------


def _plain_and_resampled(ctx: Context) -> tuple[dict[str, str], dict[str, str]]:
    """Row name -> set directory (each generator's plain set, then its resampled sets, as the thesis's
    tables order them), and each resampled row -> its generator's plain row."""
    sets, baselines = {}, {}
    variants = weigh_variants(ctx.generators)
    for g in ctx.generators:
        sets[f"{g}_plain"] = str(ctx.path("samples", g))
        for variant in (v for v in variants if v.generator == g):
            sets[f"{variant.name}_resampled"] = str(ctx.path("resampled", variant.name))
            baselines[f"{variant.name}_resampled"] = f"{g}_plain"
    return sets, baselines


def _evaluate_spec(ctx: Context) -> EvaluateSpec:
    data = ctx.config("data")
    sets, _ = _plain_and_resampled(ctx)
    features = ({"features": "inception", "inception_weights": ctx.inception_weights} if ctx.inception_weights
                else {"features": "domain", "domain_checkpoint": str(ctx.path("domain"))})
    return EvaluateSpec(real=data["dataset"], root=data["root"], sets=sets, out=str(ctx.path("evaluate")),
                        config=ctx.config("evaluate"), **features)


def _run_evaluate(ctx: Context, tracker: Tracker) -> StageResult:
    return evaluate_sets(_logged(_evaluate_spec(ctx), tracker), tracker=tracker, progress=ctx.progress,
                         progress_bar=ctx.progress_bar)


def _methods_spec(ctx: Context) -> EvaluateSpec:
    """Every weighting's sets of each resampler, at the size all of them reach: rejection keeps at most
    k (fewer when fewer are accepted), and FID must compare sets of one size."""
    own = ctx.config("resample").method
    sets = {}
    for variant in weigh_variants(ctx.generators):
        sets[f"{variant.name}_{own}"] = str(ctx.path("resampled", variant.name))
        for method in ctx.config("pipeline").compare_methods:
            sets[f"{variant.name}_{method}"] = str(ctx.path("resampled", _resampled_name(variant.name, method)))
    spec = _evaluate_spec(ctx)
    k = min([spec.config.k, *(_draws(path) for path in sets.values())])
    return dataclasses.replace(spec, sets=sets, out=str(ctx.path("evaluate_methods")),
                               config=dataclasses.replace(spec.config, k=k, uniform_k=True))


def _draws(path: str) -> int:
    """How many images a resampled set stands for (its copies expanded)."""
    return int(SampleSet(path).manifest.info[resample.stage.INFO_SUMMARY][KEY_DRAWS])


def _audit_spec(ctx: Context) -> AuditSpec:
    """The evaluated sets, each resampled one's near-copy change measured against its plain one."""
    sets, compare = _plain_and_resampled(ctx)
    data = ctx.config("data")
    return AuditSpec(real=data["dataset"], root=data["root"], sets=sets, out=str(ctx.path("audit")),
                     domain_checkpoint=str(ctx.path("domain")), config=ctx.config("audit"), compare=compare)


def _run_audit(ctx: Context, tracker: Tracker) -> StageResult:
    return audit_sets(_logged(_audit_spec(ctx), tracker), tracker=tracker, progress=ctx.progress)


def _methods_complete(ctx: Context) -> bool:
    try:
        spec = _methods_spec(ctx)  # reads the resampled sets' sizes
    except (ManifestError, FileNotFoundError):
        return False
    return evaluate.is_complete(spec.out, spec)


def _run_evaluate_methods(ctx: Context, tracker: Tracker) -> StageResult:
    return evaluate_sets(_logged(_methods_spec(ctx), tracker), tracker=tracker, progress=ctx.progress,
                         progress_bar=ctx.progress_bar)


def _sweep_sources(ctx: Context) -> dict[str, str]:
    """Sweep source names -> this run's sets: ``<g>_plain``/``_resampled``/``_weighted``, and the
    bare ``plain``/``resampled``/``weighted`` of the thesis's sweep for its generator (PixelCNN++ when
    this run has it, else the last one)."""
    paths: dict[str, str] = {}
    for g in ctx.generators:
        paths[f"{g}_plain"] = str(ctx.path("samples", g))
        paths[f"{g}_resampled"] = str(ctx.path("resampled", g))
        paths[f"{g}_weighted"] = "weighted:" + str(ctx.path("weights", g, weigh.stage.WEIGHTED_DIR))
    thesis = THESIS_GENERATOR if THESIS_GENERATOR in ctx.generators else ctx.generators[-1]
    for kind in ("plain", "resampled", "weighted"):
        paths[kind] = paths[f"{thesis}_{kind}"]
    return paths


def sweep_overrides(ctx: Context) -> tuple[Path, list[str]]:
    """The preset's sweep config file and the overrides that point it at this run's sets."""
    settings = ctx.config("ssl")
    config_path = sweep_config_path(settings.config)
    sweep = load_sweep_config(config_path, settings.overrides)
    data = ctx.config("data")
    paths = _sweep_sources(ctx)
    overrides = [f"dataset={data['dataset']}", *settings.overrides]
    if data["root"]:
        overrides.append(f"root={data['root']}")
    overrides += [f"sources.{name}={path}" for name, path in paths.items() if name in sweep.sources]
    # generated sources of generators this run did not train are dropped from the grid
    available = [name for name in sweep.grid["source"] if name in paths or name in ("real", "none")]
    if not available:
        raise ValueError(f"{config_path}: none of the grid's sources {list(sweep.grid['source'])} exist in this run")
    overrides.append(f"grid.source=[{', '.join(available)}]")
    if sweep.compare_to is not None and sweep.compare_to not in available + [b["source"] for b in sweep.baselines]:
        overrides.append("compare_to=null")
    return config_path, overrides


def _run_ssl(ctx: Context, tracker: Tracker) -> StageResult:
    config_path, overrides = sweep_overrides(ctx)
    sweep = load_sweep_config(config_path, overrides)
    tracker.log_params({"config": str(config_path), "overrides": overrides})
    # the trials become child runs of this stage run, which also gets the sweep's params, metrics and tables
    return run_sweep(sweep, out=ctx.path("ssl"), address=ctx.cluster.address, tracker=tracker, overwrite=True)


def _run_report(ctx: Context, tracker: Tracker) -> StageResult:
    md, page = build_report(ctx.run_dir, outputs=ctx.outputs)
    tracker.log_artifact(md)
    tracker.log_artifact(page)
    return StageResult(out=str(page))


def stages_for(ctx: Context) -> list[Stage]:
    """The ordered stage list for this preset: one train/generate per generator, one weigh/resample per
    weighting of its samples (:func:`~rgm_ray.weigh.variants.weigh_variants`)."""
    gens = ctx.generators
    stages = [Stage("data", _data_out, lambda c: all(_is_set(c.path("data", f"real_{s}")) for s in SPLITS),
                    _run_data),
              Stage("domain", lambda c: c.path("domain"), _domain_complete, _run_domain, _describe_domain)]
    stages += [Stage(f"train_{g}", _train_out(g), _train_complete(g), _run_train(g), _describe_train(g))
               for g in gens]
    stages += [Stage(f"generate_{g}", lambda c, g=g: c.path("samples", g),
                     lambda c, g=g: generate.is_complete(_generate_spec(c, g)), _run_generate(g)) for g in gens]
    variants = weigh_variants(gens)
    stages += [Stage(f"weigh_{v.name}", lambda c, n=v.name: c.path("weights", n),
                     lambda c, n=v.name: weigh.is_complete(c.path("weights", n)), _run_weigh(v)) for v in variants]
    methods = ctx.config("pipeline").compare_methods
    stages += [_resample_stage(v.name) for v in variants]
    stages += [_resample_stage(v.name, m) for v in variants for m in methods]
    stages.append(Stage("evaluate", lambda c: c.path("evaluate"), lambda c: evaluate.is_complete(c.path("evaluate"), _evaluate_spec(c)),
                        _run_evaluate))
    stages.append(Stage("audit", lambda c: c.path("audit"), lambda c: audit.is_complete(c.path("audit"), _audit_spec(c)),
                        _run_audit))
    if methods:
        stages.append(Stage("evaluate_methods", lambda c: c.path("evaluate_methods"),
                            _methods_complete, _run_evaluate_methods))
    stages.append(Stage("ssl", lambda c: c.path("ssl"), lambda c: tune.is_complete(c.path("ssl")), _run_ssl))
    stages.append(Stage("report", lambda c: c.run_dir, lambda c: False, _run_report))
    return stages
