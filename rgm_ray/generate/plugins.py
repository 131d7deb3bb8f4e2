"""Generator plugins: any model that draws seeded uint8 images runs on the generation actors.

``rgm generate --generator package.module:factory [--generator-arg k=v ...]`` (in Python:
``GenerateSpec(generator=..., generator_args=...)``) samples a generator that rgm_ray does not know.
The protocol:

- ``factory(**args)`` is called once on the driver (to check the plugin and plan the set) and once in
  every Ray worker. ``args`` are the ``--generator-arg`` values read as YAML scalars (``size=28`` is
  an int, ``scale=0.5`` a float, ``flag=true`` a bool, ``name=foo`` a string). The module must be
  importable on every node.
- The object it returns has ``sample(n: int, seed: int)`` returning ``n`` images as a uint8 numpy
  array or torch tensor (any device) of shape ``[n, C, H, W]``;
- ``shape``: an attribute or zero-argument method giving ``(C, H, W)``;
- optionally ``version`` (or ``digest``): an attribute or method giving a string. It enters the
  plan's digest, so change it whenever the weights or the code change: a set drawn with the old
  generator is then refused (``--overwrite`` replaces it) instead of being silently extended.

The determinism it must honour: ``sample(n, seed)`` depends on ``(n, seed)`` only, so it returns the
same bytes on any worker, in any process, however often it is called (draw every random number from
a generator seeded with ``seed``; ``seed`` is a non-negative int below 2**64). Shard ``i`` of a set is
``sample(len(shard i), plan.shard_seed(i))``, exactly as for built-in models, which is what makes a
plugin set byte-identical for any number of workers, resumable, and a killed worker's shard
redrawable. ``--sampler`` does not apply and ``--batch-size`` is not passed: the plugin batches as it
likes. ``rgm_ray.generate.example_plugin`` is a working example.

The driver checks all of it before any actor starts (import, factory, ``shape``, and two images
drawn twice, which must be uint8 of the right shape and identical); each worker checks every shard.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import numpy as np
import torch

from rgm_ray.configs import parse_override
from rgm_ray.generate.plan import PLUGIN_KIND, PluginPlan

GeneratorArgs = tuple[tuple[str, Any], ...]  # (name, YAML scalar) pairs, sorted by name
PROBE_IMAGES = 2  # images the driver draws (twice) to check a plugin
_SCALARS = (str, int, float, bool, type(None))


class PluginError(ValueError):
    """A generator plugin that cannot be loaded or breaks the protocol; one line naming the plugin."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"generator plugin {reference!r}: {problem}")


def plugin_args(args: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> GeneratorArgs:
    """Factory keyword arguments, checked (identifiers, each once, JSON scalars) and sorted by name."""
    pairs = list(args.items()) if isinstance(args, Mapping) else [tuple(pair) for pair in args]
    names = [name for name, _ in pairs]
    for name, value in pairs:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"generator argument name {name!r} is not a Python identifier")
        if names.count(name) > 1:
            raise ValueError(f"generator argument {name!r} is given twice")
        if not isinstance(value, _SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"generator argument {name}={value!r}: a value must be a string, a finite "
                             "number, a boolean or null")
    return tuple(sorted(pairs, key=lambda pair: pair[0]))


def parse_generator_args(texts: Iterable[str]) -> GeneratorArgs:
    """``--generator-arg k=v`` texts as checked, sorted factory arguments (values read as YAML)."""
    pairs = []
    for text in texts:
        (name,), value = parse_override(text, origin="--generator-arg", depth=1)
        pairs.append((name, value))
    return plugin_args(pairs)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _resolve_factory(reference: str) -> Callable[..., Any]:
    module_name, sep, attribute = reference.partition(":")
    if not (sep and module_name and attribute):
        raise PluginError(reference, "must look like package.module:factory")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module's import does wrong, say it in one line
        raise PluginError(reference, f"cannot import {module_name!r} ({_one_line(exc)})") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError as exc:
            raise PluginError(reference, f"{module_name!r} has no attribute {attribute!r}") from exc
    if not callable(found):
        raise PluginError(reference, f"{attribute!r} is not a callable factory (it is a {type(found).__name__})")
    return found


class Plugin:
    """A generator plugin, loaded with ``factory(**args)`` and held to the protocol."""

    def __init__(self, reference: str, args: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        self.reference = reference
        self.args = plugin_args(args)
        factory = _resolve_factory(reference)
        call = ", ".join(f"{name}={value!r}" for name, value in self.args)
        try:
            self.generator = factory(**dict(self.args))
        except Exception as exc:
            raise PluginError(reference, f"factory({call}) failed ({_one_line(exc)})") from exc
        if not callable(getattr(self.generator, "sample", None)):
            raise PluginError(reference, f"factory({call}) returned a {type(self.generator).__name__}, "
                                         "which has no sample(n, seed) method")
        self.shape = self._shape()
        self.version = self._version()

    def _attribute(self, name: str) -> Any:
        value = getattr(self.generator, name, None)
        if not callable(value):
            return value
        try:
            return value()
        except Exception as exc:
            raise PluginError(self.reference, f"{name}() failed ({_one_line(exc)})") from exc

    def _shape(self) -> tuple[int, int, int]:
        shape = self._attribute("shape")
        dims = tuple(shape) if isinstance(shape, Iterable) else ()
        if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                                     for d in dims):
            raise PluginError(self.reference, f"shape must be (C, H, W), three positive ints, got {shape!r}")
        channels, height, width = (int(d) for d in dims)
        return channels, height, width

    def _version(self) -> str | None:
        for name in ("version", "digest"):
            version = self._attribute(name)
            if version is not None:
                if not isinstance(version, str):
                    raise PluginError(self.reference, f"{name} must be a string, got {version!r}")
                return version
        return None

    @property
    def digest(self) -> str:
        """sha256 over the reference, the arguments and the plugin's version: the plan's identity."""
        facts = {"generator": self.reference, "generator_args": dict(self.args), "version": self.version}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``sample(n, seed)`` as a uint8 numpy array [n, C, H, W]; PluginError if it is anything else."""
        try:
            images = self.generator.sample(n, seed)
        except Exception as exc:
            raise PluginError(self.reference, f"sample({n}, seed={seed}) failed ({_one_line(exc)})") from exc
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        images = np.asarray(images)
        expected = (n, *self.shape)
        if images.dtype != np.uint8 or images.shape != expected:
            raise PluginError(self.reference, f"sample({n}, seed) returned {images.dtype} {list(images.shape)}; "
                                              f"the protocol needs uint8 {list(expected)} ([n, C, H, W])")
        return images

    def plan(self, *, num_samples: int, shard_size: int, seed: int) -> PluginPlan:
        """The set's plan, once a probe shows the plugin keeps the protocol (on the driver, before any actor)."""
        plan = PluginPlan(checkpoint_digest=self.digest, kind=PLUGIN_KIND, num_samples=num_samples,
                          shard_size=shard_size, seed=seed, sampler=PLUGIN_KIND, generator=self.reference,
                          generator_args=self.args, image_shape=self.shape)
        probe = self.draw(PROBE_IMAGES, plan.shard_seed(0))
        if not np.array_equal(probe, self.draw(PROBE_IMAGES, plan.shard_seed(0))):
            raise PluginError(self.reference, "sample(n, seed) gave other images for the same (n, seed); draw "
                                              "every random number from a generator seeded with seed")
        return plan

    def draw_shard(self, plan: PluginPlan, index: int) -> np.ndarray:
        """Shard ``index`` of ``plan``: ``sample(len(shard), plan.shard_seed(index))``, checked."""
        if (self.digest, self.shape) != (plan.checkpoint_digest, tuple(plan.image_shape)):
            raise PluginError(self.reference, "this worker's plugin differs from the planned one (version, "
                                              "arguments or shape); install the same version on every node")
        return self.draw(len(plan.shard_ids(index)), plan.shard_seed(index))
