"""Sweep configurations (``tune_configs/*.yaml``): finding, loading, ``--set`` overrides and validation.

A sweep is a grid of semi-supervised runs. Every trial is one *cell* ``{labels, source, sl_weight,
seed}``: the cross product of the ``grid`` lists, plus optional ``baselines`` (``{source,
sl_weight}`` pairs crossed with the grid's labels and seeds: e.g. ``none`` and ``real``, which need
no SL-weight sweep). Sources are referred to by name; ``sources`` maps each name to an unlabelled
source string (``none``, ``real``, ``DIR``, ``weighted:DIR``), so a pipeline fills in the paths
with ``--set sources.plain=DIR``. Paths are checked when the sweep starts, not here, so the shipped
configs validate on a machine that has not generated anything yet.

A configuration is named by a path or, for the shipped ones, by name (``ssl_smoke`` or
``ssl_smoke.yaml``; :func:`sweep_config_path`), so ``rgm tune --config ssl_smoke`` and the pipeline's
``ssl.config`` work from any directory and from an installed wheel.

Every problem is a :class:`ConfigError` naming the file, the key and the reason.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from rgm_ray import configs
from rgm_ray.data import DATASET_NAMES
from rgm_ray.ssl.sources import SourceSpec, parse_source
from rgm_ray.ssl.trainer import SSLConfig, parse_labels

SHIPPED_DIR = "tune_configs"  # at the repository root; inside the package once installed (setup.py)
SUFFIX = ".yaml"
GRID_KEYS = ("labels", "source", "sl_weight", "seed")
BASELINE_KEYS = ("source", "sl_weight")
PER_CELL_TRAIN_KEYS = ("labels", "sl_weight", "seed")  # set by the cell, not by ``train``
SCHEDULERS = ("asha",)
TOP_LEVEL = {
    "name": "sweep name: the Ray Tune experiment and default output directory name",
    "dataset": f"real dataset, one of {', '.join(DATASET_NAMES)}",
    "root": "dataset root (null: the system path)",
    "out": "output directory (null: runs/tune/<name>)",
    "experiment": "MLflow experiment of the trial runs (null: <name>)",
    "tracking_uri": "MLflow tracking URI shared by all trials (null: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    "sources": "mapping name -> unlabelled source (none | real | DIR | weighted:DIR)",
    "grid": f"lists {', '.join(GRID_KEYS)} whose cross product is swept",
    "baselines": "list of {source, sl_weight} crossed with grid labels and seeds",
    "train": "SSL training settings shared by all trials",
    "resources_per_trial": "{cpu: N, gpu: N} reserved for each trial",
    "max_concurrent_trials": "cap on trials running at once (null: as many as resources allow)",
    "scheduler": "null or {type: asha, grace_period: epochs, reduction_factor: r}",
    "compare_to": "source name the paired-difference table compares the others with (null: none)",
}
REQUIRED = ("name", "dataset", "sources", "grid")


class ConfigError(ValueError):
    """A sweep configuration problem at ``key``."""

    def __init__(self, origin: str, key: str, reason: str) -> None:
        super().__init__(f"{origin}: key '{key}': {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Scheduler:
    """ASHA early stopping of trials on validation accuracy (per epoch)."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep; :meth:`cells` lists its trials."""

    name: str
    dataset: str
    sources: dict[str, SourceSpec]
    grid: dict[str, tuple[Any, ...]]
    train: dict[str, Any]
    root: str | None = None
    out: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    baselines: tuple[dict[str, Any], ...] = ()
    resources_per_trial: dict[str, float] | None = None
    max_concurrent_trials: int | None = None
    scheduler: Scheduler | None = None
    compare_to: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "tune" / self.name

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": 1.0, "gpu": 0.0, **(self.resources_per_trial or {})}

    def cells(self) -> list[dict[str, Any]]:
        """Every trial's ``{labels, source, sl_weight, seed}``: grid cells, then baselines; no duplicates."""
        grid = [dict(zip(GRID_KEYS, values)) for values in itertools.product(*(self.grid[k] for k in GRID_KEYS))]
        extra = [{"labels": labels, **base, "seed": seed}
                 for base in self.baselines for labels in self.grid["labels"] for seed in self.grid["seed"]]
        seen, cells = set(), []
        for cell in grid + extra:
            key = tuple(cell[k] for k in GRID_KEYS)
            if key not in seen:
                seen.add(key)
                cells.append(cell)
        return cells

    def ssl_config(self, cell: Mapping[str, Any]) -> SSLConfig:
        """The full training configuration of one cell."""
        return SSLConfig.from_dict({**self.train, **{k: cell[k] for k in PER_CELL_TRAIN_KEYS}})

    def used_sources(self) -> dict[str, SourceSpec]:
        names = {cell["source"] for cell in self.cells()}
        return {name: spec for name, spec in self.sources.items() if name in names}


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], origin: str = "--set") -> dict[str, Any]:
    """Copy of ``raw`` with ``key.path=value`` overrides (values parsed as YAML, e.g. ``grid.seed=[0,1]``);
    a missing or null section is created. Problems are :class:`ConfigError` naming the key."""
    try:
        return configs.apply_overrides(raw, overrides, origin=origin)
    except configs.OverrideError as exc:
        raise ConfigError(origin, exc.key, f"{exc.reason} (override {exc.override!r})") from exc


def shipped_configs_dir() -> Path:
    """The sweep configurations that come with the running code: ``rgm_ray/tune_configs/`` in an installed
    wheel, the repository's top-level ``tune_configs/`` in a source checkout (an editable install, a Ray
    job's working directory), so a job's configs are always those beside its code."""
    package = Path(str(resources.files("rgm_ray")))
    installed = package / SHIPPED_DIR
    return installed if installed.is_dir() else package.parent / SHIPPED_DIR


def shipped_config_names() -> list[str]:
    """The names :func:`sweep_config_path` accepts, e.g. ``ssl_smoke``."""
    return sorted(path.stem for path in shipped_configs_dir().glob(f"*{SUFFIX}"))


def sweep_config_path(name_or_path: str | Path) -> Path:
    """The YAML file ``name_or_path`` names: a shipped configuration's bare name, with or without
    ``.yaml``, else a path to a file. A shipped name wins over a same-named file in the working
    directory (write ``./NAME.yaml`` for that one), so a stray copy cannot change a preset's sweep."""
    path = Path(name_or_path).expanduser()
    shipped = shipped_configs_dir() / (path.stem + SUFFIX)
    if path.name == str(name_or_path) and path.suffix in ("", SUFFIX) and shipped.is_file():
        return shipped
    if path.is_file():
        return path
    raise FileNotFoundError(f"{name_or_path}: no such sweep configuration (a YAML file, or a shipped name: "
                            f"{', '.join(shipped_config_names())})")


def load_sweep_config(path: str | Path, overrides: Iterable[str] = ()) -> SweepConfig:
    """Read, override and validate a YAML sweep configuration (a path or a shipped name: :func:`sweep_config_path`)."""
    path = sweep_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "<file>", f"not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "<file>", "must be a YAML mapping of the keys " + ", ".join(TOP_LEVEL))
    return sweep_config_from_dict(apply_overrides(raw, overrides, f"{path} (--set)"), origin=str(path))


def sweep_config_from_dict(raw: Mapping[str, Any], origin: str = "<sweep config>") -> SweepConfig:
    """Validate a raw (parsed YAML) configuration; see ``TOP_LEVEL`` for the keys."""
    def fail(key: str, reason: str) -> ConfigError:
        return ConfigError(origin, key, reason)

    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise fail(unknown[0], f"unknown key; known keys: {', '.join(TOP_LEVEL)}")
    for key in REQUIRED:
        if raw.get(key) is None:
            raise fail(key, f"is required ({TOP_LEVEL[key]})")
    for key in ("name", "dataset", "root", "out", "experiment", "tracking_uri"):
        if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise fail(key, f"must be a non-empty string, got {raw[key]!r}")
    if raw["dataset"] not in DATASET_NAMES:
        raise fail("dataset", f"{raw['dataset']!r} is not one of {', '.join(DATASET_NAMES)}")
    sources = _sources(raw["sources"], fail)
    grid = _grid(raw["grid"], sources, fail)
    baselines = _baselines(raw.get("baselines") or [], sources, fail)
    train = _train(raw.get("train") or {}, fail)
    resources = _resources(raw.get("resources_per_trial"), fail)
    max_concurrent = raw.get("max_concurrent_trials")
    if max_concurrent is not None and not _is_int(max_concurrent, 1):
        raise fail("max_concurrent_trials", f"must be a positive int or null, got {max_concurrent!r}")
    scheduler = _scheduler(raw.get("scheduler"), fail)
    epochs = train.get("epochs", SSLConfig().epochs)
    if scheduler is not None and scheduler.grace_period > epochs:
        raise fail("scheduler.grace_period", f"{scheduler.grace_period} exceeds train.epochs ({epochs})")
    compare_to = raw.get("compare_to")
    swept = set(grid["source"]) | {b["source"] for b in baselines}
    if compare_to is not None and compare_to not in swept:
        raise fail("compare_to", f"{compare_to!r} is not a swept source ({', '.join(sorted(swept))})")
    return SweepConfig(name=raw["name"], dataset=raw["dataset"], sources=sources, grid=grid, train=train,
                       root=raw.get("root"), out=raw.get("out"), experiment=raw.get("experiment"),
                       tracking_uri=raw.get("tracking_uri"), baselines=tuple(baselines),
                       resources_per_trial=resources, max_concurrent_trials=max_concurrent, scheduler=scheduler,
                       compare_to=compare_to)


def _is_int(v: object, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_weight(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf


def _sources(raw: object, fail) -> dict[str, SourceSpec]:
    if not isinstance(raw, dict) or not raw:
        raise fail("sources", "must be a non-empty mapping name -> none | real | DIR | weighted:DIR")
    sources = {}
    for name, text in raw.items():
        if not isinstance(name, str) or not name:
            raise fail("sources", f"source names must be non-empty strings, got {name!r}")
        try:
            sources[name] = parse_source(text)
        except ValueError as exc:
            raise fail(f"sources.{name}", str(exc)) from exc
    return sources


def _grid(raw: object, sources: dict[str, SourceSpec], fail) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, dict):
        raise fail("grid", f"must be a mapping with the lists {', '.join(GRID_KEYS)}")
    extra = sorted(set(raw) - set(GRID_KEYS))
    if extra:
        raise fail(f"grid.{extra[0]}", f"unknown grid key; the grid sweeps {', '.join(GRID_KEYS)}")
    grid: dict[str, tuple[Any, ...]] = {}
    for key in GRID_KEYS:
        values = raw.get(key)
        if not isinstance(values, list) or not values:
            raise fail(f"grid.{key}", f"must be a non-empty list, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise fail(f"grid.{key}", f"has repeated values {values}")
        for value in values:
            reason = _cell_value_problem(key, value, sources)
            if reason:
                raise fail(f"grid.{key}", reason)
        grid[key] = tuple(_normalise(key, v) for v in values)
    return grid


def _cell_value_problem(key: str, value: object, sources: dict[str, SourceSpec]) -> str | None:
    if key == "labels":
        try:
            parse_labels(value)
        except ValueError as exc:
            return str(exc)
    elif key == "source" and value not in sources:
        return f"{value!r} is not a name in 'sources' ({', '.join(sources)})"
    elif key == "sl_weight" and not _is_weight(value):
        return f"SL weights must be finite numbers >= 0, got {value!r}"
    elif key == "seed" and not _is_int(value, 0):
        return f"seeds must be non-negative ints, got {value!r}"
    return None


def _normalise(key: str, value: Any) -> Any:
    """Cells hold ``labels`` as an int or "all" and SL weights as floats, so they compare and print alike."""
    if key == "labels":
        labels = parse_labels(value)
        return "all" if labels is None else labels
    return float(value) if key == "sl_weight" else value


def _baselines(raw: object, sources: dict[str, SourceSpec], fail) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise fail("baselines", f"must be a list of {{source, sl_weight}}, got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != set(BASELINE_KEYS):
            raise fail(f"baselines[{i}]", f"must be a mapping with exactly {', '.join(BASELINE_KEYS)}, got {item!r}")
        for key in BASELINE_KEYS:
            reason = _cell_value_problem(key, item[key], sources)
            if reason:
                raise fail(f"baselines[{i}].{key}", reason)
        out.append({key: _normalise(key, item[key]) for key in BASELINE_KEYS})
    return out


def _train(raw: object, fail) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail("train", f"must be a mapping of SSL settings, got {raw!r}")
    allowed = {f.name for f in fields(SSLConfig)} - set(PER_CELL_TRAIN_KEYS)
    for key, value in raw.items():
        if key in PER_CELL_TRAIN_KEYS:
            raise fail(f"train.{key}", "is set per trial by the grid, not in 'train'")
        if key not in allowed:
            raise fail(f"train.{key}", f"unknown setting; known: {', '.join(sorted(allowed))}")
        try:
            SSLConfig(**{key: value})  # fields are validated independently, so this pinpoints the key
        except (TypeError, ValueError) as exc:
            raise fail(f"train.{key}", str(exc)) from exc
    return dict(raw)


def _resources(raw: object, fail) -> dict[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not set(raw) <= {"cpu", "gpu"}:
        raise fail("resources_per_trial", f"must be a mapping with keys cpu and/or gpu, got {raw!r}")
    for key, value in raw.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "cpu" and value == 0):
            raise fail(f"resources_per_trial.{key}", f"must be a number {'> 0' if key == 'cpu' else '>= 0'}, got {value!r}")
    return {k: float(v) for k, v in raw.items()}


def _scheduler(raw: object, fail) -> Scheduler | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail("scheduler", f"must be null or a mapping with 'type: asha', got {raw!r}")
    unknown = sorted(set(raw) - {f.name for f in fields(Scheduler)})
    if unknown:
        raise fail(f"scheduler.{unknown[0]}", "unknown key; known: type, grace_period, reduction_factor")
    scheduler = Scheduler(**raw)
    if scheduler.type not in SCHEDULERS:
        raise fail("scheduler.type", f"{scheduler.type!r} is not one of {', '.join(SCHEDULERS)}")
    if not _is_int(scheduler.grace_period, 1):
        raise fail("scheduler.grace_period", f"must be a positive int (epochs), got {scheduler.grace_period!r}")
    rf = scheduler.reduction_factor
    if not isinstance(rf, (int, float)) or isinstance(rf, bool) or not rf > 1:
        raise fail("scheduler.reduction_factor", f"must be a number > 1, got {rf!r}")
    return scheduler
