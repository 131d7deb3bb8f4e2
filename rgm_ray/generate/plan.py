"""What a generation run will produce, fixed before any shard is drawn.

The plan (checkpoint digest, N, shard size, seed, sampler) is written to ``_generation.json`` when a
run starts; a generator plugin's plan (:class:`PluginPlan`) adds the plugin reference, its arguments
and its image shape, its digest standing in for the checkpoint's. Re-running with the same plan
resumes; a different plan against the same directory is refused unless ``--overwrite``. Shard ``i``
holds ``sample_id`` i*S .. min((i+1)*S, N) - 1 and draws its randomness from ``(seed, i)`` only, so
the bytes never depend on how many workers ran.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgm_ray.seeding import derive_seed
from rgm_ray.store.atomic import atomic_write_json
from rgm_ray.store.layout import PLAN_FILE, migrate_layout, side_file

PLUGIN_KIND = "plugin"  # a plugin plan's ``kind`` and ``sampler``


class PlanMismatchError(ValueError):
    """An existing (partial) set in the output directory was made with different settings."""


@dataclass(frozen=True)
class GenerationPlan:
    checkpoint_digest: str
    kind: str
    num_samples: int
    shard_size: int
    seed: int
    sampler: str

    def __post_init__(self) -> None:
        if self.num_samples <= 0 or self.shard_size <= 0:
            raise ValueError(f"num_samples and shard_size must be positive, got {self.num_samples}, "
                             f"{self.shard_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    @property
    def source(self) -> str:
        """Provenance recorded in every shard's schema metadata."""
        return f"checkpoint:{self.kind}:sha256:{self.checkpoint_digest}"

    def shard_ids(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard {index} out of range 0..{self.num_shards - 1}")
        start = index * self.shard_size
        return np.arange(start, min(start + self.shard_size, self.num_samples), dtype=np.int64)

    def shard_seed(self, index: int) -> int:
        return derive_seed(self.seed, index)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in ``_generation.json`` and compared on every re-run."""
        return asdict(self)

    def digest(self) -> str:
        """Hex SHA-256 of :meth:`to_dict` (canonical JSON): written into every shard, so a resume
        reuses only shards this very plan drew (not, say, one copied in from a run with another seed)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class PluginPlan(GenerationPlan):
    """The plan of a generator plugin (``kind`` and ``sampler`` are ``PLUGIN_KIND``).

    ``checkpoint_digest`` is the plugin's digest (reference, arguments, version), so a changed plugin
    or argument is a different plan; ``image_shape`` is what every shard must hold.
    """

    generator: str  # "package.module:factory"
    generator_args: tuple[tuple[str, Any], ...]  # sorted by name
    image_shape: tuple[int, int, int]

    @property
    def source(self) -> str:
        return f"plugin:{self.generator}:sha256:{self.checkpoint_digest}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "generator_args": dict(self.generator_args), "image_shape": list(self.image_shape)}


def write_plan(directory: str | Path, plan: GenerationPlan) -> None:
    atomic_write_json(Path(directory) / PLAN_FILE, plan.to_dict())


def check_or_write_plan(directory: str | Path, plan: GenerationPlan) -> bool:
    """Record ``plan`` in ``directory``; return True if a matching plan was already there (resume).

    Raises PlanMismatchError naming the differing fields if another plan is recorded there. A set of
    the same plan in the old layout (``generation.json``) is resumed in the new one: its side files
    are renamed first (:func:`~rgm_ray.store.layout.migrate_layout`).
    """
    directory = Path(directory)
    path = side_file(directory, PLAN_FILE)
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlanMismatchError(f"{path}: unreadable ({exc}); pass --overwrite to start afresh") from exc
        mine = plan.to_dict()
        differing = sorted(k for k in set(mine) | set(recorded) if mine.get(k) != recorded.get(k))
        if differing:
            details = ", ".join(f"{k}: {recorded.get(k)!r} -> {mine.get(k)!r}" for k in differing)
            raise PlanMismatchError(f"{directory} holds samples from another run ({details}); "
                                    "pass --overwrite to replace them or choose another --out")
        migrate_layout(directory)
        return True
    # hidden names do not count: a run killed while writing this plan leaves its temporary behind
    if directory.exists() and any(not p.name.startswith(".") for p in directory.iterdir()):
        raise PlanMismatchError(f"{directory} is not empty and was not written by 'rgm generate'; "
                                "pass --overwrite to replace it or choose another --out")
    directory.mkdir(parents=True, exist_ok=True)
    write_plan(directory, plan)
    return False
