"""The one registry of generator families: commands, stages, the bench and the report all ask it.

A family is everything the rest of rgm_ray needs to know about one kind of generator: its public
name (CLI arguments, preset lists, run directories), the name tables and figures show, the
checkpoint ``kind`` its model writes into ``config.json``, its model and config classes, its
samplers, how to draw images from it, how to train it and which preset sections hold its
architecture and training defaults.

Adding a family is one new module plus one entry in ``FAMILIES``. The module provides

- a frozen config dataclass with ``to_dict()`` and a strict ``from_dict(d)`` (unknown keys raise);
- an ``nn.Module`` built as ``Model(config)``, with a class attribute ``kind`` (the checkpoint kind:
  never renamed once checkpoints exist) and the attribute ``config``;
- a sampling function ``sample(model, n, *, seed, batch_size, sampler) -> uint8 Tensor [n,C,H,W]``
  on the CPU, in which image ``j`` depends only on ``(seed, j)``; its sampler names go in
  ``samplers``, the default (fastest exact) one first;
- a training loop with the signature and outputs of :func:`rgm_ray.models.training.train`, named
  in ``train_loop``: a likelihood model gives itself ``loss(x_uint8)`` and uses that loop (VAE,
  PixelCNN++), an adversarial one brings its own (the GAN: :mod:`rgm_ray.models.gan_training`);

and ``presets.py`` gets the family's two sections (``preset_section``, ``train_section``).

Training loops are named as ``"module:function"`` and imported on first use because they import
this registry themselves (checkpoints rebuild their model through it).

Checkpoint kinds outlive names: PixelCNN++ checkpoints say ``"pixelcnnpp"`` (so committed ones load
byte for byte) while its public name is ``"pixelcnn"``. A kind that differs from its family's name is
therefore also accepted as a deprecated spelling of that name (``parse_generator_name``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from rgm_ray.models import gan, pixelcnnpp_sampling, vae
from rgm_ray.models.gan import GAN, GANConfig
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.vae import VAE, VAEConfig

# (model, n, *, seed, batch_size, sampler) -> CPU uint8 images [n,C,H,W]; image j depends on (seed, j) only.
SampleFunction = Callable[..., Tensor]
# (model, train_images, test_images, config, out, *, meta, tracker, device, progress) -> summary (metrics.json)
TrainFunction = Callable[..., dict[str, Any]]
MLE_TRAIN_LOOP = "rgm_ray.models.training:train"


@dataclass(frozen=True)
class GeneratorFamily:
    """One kind of generator, as the rest of rgm_ray sees it."""

    name: str  # the public name: CLI arguments, preset ``pipeline.generators``, run directories
    display_name: str  # tables and figure captions
    model_class: type[nn.Module]  # built as model_class(config); its ``kind`` is written in checkpoints
    config_class: type  # frozen dataclass with to_dict() / from_dict()
    samplers: tuple[str, ...]  # the first is the default
    sample: SampleFunction
    default_batch_size: int  # what ``draw`` uses when given none (e.g. the training sample grid)
    preset_section: str  # the preset section holding the model config
    train_section: str  # the preset section holding the training defaults
    train_loop: str  # "module:function" of its training loop (see ``train``)
    # True when its checkpoint holds a trained real-vs-generated discriminator whose logit can weigh its
    # samples too (``rgm weigh --backbone gan-discriminator``), next to the trained-for-purpose classifier.
    has_discriminator: bool = False

    @property
    def kind(self) -> str:
        """The checkpoint ``kind`` (``config.json``), which may differ from the public name."""
        return self.model_class.kind

    @property
    def train(self) -> TrainFunction:
        """The family's training loop: ``train(model, train_images, test_images, config, out, *, meta, ...)``."""
        module, _, function = self.train_loop.partition(":")
        return getattr(importlib.import_module(module), function)

    @property
    def default_sampler(self) -> str:
        """The fastest exact sampler."""
        return self.samplers[0]

    def check_sampler(self, sampler: str) -> None:
        if sampler not in self.samplers:
            raise ValueError(f"sampler {sampler!r} does not fit a {self.kind} checkpoint; choose from "
                             f"{', '.join(self.samplers)}")

    def draw(self, model: nn.Module, n: int, *, seed: int, batch_size: int | None = None,
             sampler: str | None = None) -> np.ndarray:
        """``n`` uint8 images [n,C,H,W]; image j depends on (seed, j) only. None: the family's defaults."""
        sampler = self.default_sampler if sampler is None else sampler
        self.check_sampler(sampler)
        batch_size = self.default_batch_size if batch_size is None else batch_size
        return self.sample(model, n, seed=seed, batch_size=batch_size, sampler=sampler).cpu().numpy()


def _sample_vae(model: VAE, n: int, *, seed: int, batch_size: int, sampler: str) -> Tensor:
    return model.sample(n, seed=seed, batch_size=batch_size, mode=sampler)


FAMILIES: tuple[GeneratorFamily, ...] = (  # in pipeline order
    GeneratorFamily(
        name="vae", display_name="VAE", model_class=VAE, config_class=VAEConfig,
        samplers=vae.SAMPLE_MODES, sample=_sample_vae, default_batch_size=vae.DEFAULT_BATCH_SIZE,
        preset_section="vae", train_section="train_vae", train_loop=MLE_TRAIN_LOOP,
    ),
    GeneratorFamily(
        name="pixelcnn", display_name="PixelCNN++", model_class=PixelCNNpp, config_class=PixelCNNppConfig,
        samplers=tuple(pixelcnnpp_sampling.SAMPLERS), sample=pixelcnnpp_sampling.sample_pixelcnnpp,
        default_batch_size=pixelcnnpp_sampling.DEFAULT_BATCH_SIZE,
        preset_section="pixelcnn", train_section="train_pixelcnn", train_loop=MLE_TRAIN_LOOP,
    ),
    GeneratorFamily(
        name="gan", display_name="GAN", model_class=GAN, config_class=GANConfig,
        samplers=gan.SAMPLERS, sample=gan.sample_gan, default_batch_size=gan.DEFAULT_BATCH_SIZE,
        preset_section="gan", train_section="train_gan", train_loop="rgm_ray.models.gan_training:train_gan",
        has_discriminator=True,
    ),
)
GENERATOR_NAMES: tuple[str, ...] = tuple(family.name for family in FAMILIES)
# The family the thesis's SSL study (Table 6.4) uses: its bare 'plain'/'resampled' sweep sources.
THESIS_GENERATOR = "pixelcnn"
_BY_NAME = {family.name: family for family in FAMILIES}
_BY_KIND = {family.kind: family for family in FAMILIES}
DEPRECATED_NAMES: dict[str, str] = {f.kind: f.name for f in FAMILIES if f.kind != f.name}  # old -> public


def get_family(name_or_kind: str) -> GeneratorFamily:
    """The family with this public name or checkpoint kind (no deprecation note: kinds are not names)."""
    family = _BY_NAME.get(name_or_kind) or _BY_KIND.get(name_or_kind)
    if family is None:
        raise ValueError(f"unknown generator {name_or_kind!r}; known: {', '.join(GENERATOR_NAMES)}")
    return family


def family_for_kind(kind: str) -> GeneratorFamily:
    """The family whose checkpoints have this ``kind``."""
    if kind not in _BY_KIND:
        raise ValueError(f"{kind!r} is not a generator checkpoint kind; known: {', '.join(_BY_KIND)}")
    return _BY_KIND[kind]


def parse_generator_name(text: str) -> str:
    """A generator name as a user typed it, as its public name; old spellings give a DeprecationWarning."""
    if text in DEPRECATED_NAMES:
        name = DEPRECATED_NAMES[text]
        warnings.warn(f"generator name {text!r} is deprecated; use {name!r}", DeprecationWarning, stacklevel=2)
        return name
    if text not in _BY_NAME:
        raise ValueError(f"unknown generator {text!r}; known: {', '.join(GENERATOR_NAMES)}")
    return text


def default_sampler(name_or_kind: str) -> str:
    """The fastest exact sampler of a generator, by public name or checkpoint kind."""
    return get_family(name_or_kind).default_sampler


def check_sampler(name_or_kind: str, sampler: str) -> None:
    """Raise ValueError unless ``sampler`` is one of the generator's samplers."""
    get_family(name_or_kind).check_sampler(sampler)
