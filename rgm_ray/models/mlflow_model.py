"""A generator checkpoint as an MLflow model: the network wrapped with its sampling entry point.

The train stage logs every generator checkpoint it produces (or copies from the committed assets)
with ``mlflow.pytorch`` as the run's model ``generator``, optionally registered under a name
(``rgm train --register-model NAME``, ``rgm pipeline --register-models PREFIX``). Loading it needs
rgm_ray importable (the module is pickled by reference to its classes)::

    sampler = mlflow.pytorch.load_model("models:/<model id>")   # or runs:/<run id>/generator
    images = sampler.sample(16, seed=0)        # uint8 tensor [16, C, H, W]: the family's sampling call,
                                               # which `rgm generate` runs per shard with the shard's seed
    mlflow.pyfunc.load_model(uri).predict(np.array([[16, 0]]))  # rows (n, seed) -> uint8 [N, C, H, W]

The signature says the same: int64 ``(-1, 2)`` rows ``(n, seed)`` in, the rows' images concatenated
out. MLflow's PyTorch format is a pickle (the sampling loops cannot be traced into its ``pt2`` graph
format); the wrapper pickles as its checkpoint's kind, model config and state dict, rebuilt on
loading, because weight-normalised layers (PixelCNN++) cannot be pickled as modules. Still, load
models only from stores you trust (rgm_ray's own checkpoints load with ``weights_only=True`` and
stay the source of truth). The model's requirements pin ``rgm_ray``, which is on no package index:
serve or load it where rgm_ray is installed (``mlflow models serve --env-manager local``), since
MLflow cannot build its environment from an index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from rgm_ray import __version__
from rgm_ray.models.checkpoint import build_model, checkpoint_digest, load_checkpoint, read_checkpoint_config
from rgm_ray.models.registry import get_family
from rgm_ray.tracking import Tracker

MODEL_NAME = "generator"  # the logged model's name in its run
TAG_CHECKPOINT_DIGEST = "rgm.checkpoint_digest"


class GeneratorSampler(nn.Module):
    """A generator with the sampling call of its family (:meth:`sample`); ``forward`` serves pyfunc."""

    def __init__(self, generator: nn.Module, sampler: str | None = None) -> None:
        super().__init__()
        family = get_family(generator.kind)
        self.generator = generator
        self.sampler = sampler or family.default_sampler
        config = generator.config
        self.image_shape = (config.in_channels, config.image_size, config.image_size)

    def sample(self, n: int, *, seed: int = 0, batch_size: int | None = None) -> Tensor:
        """``n`` images as uint8 [n, C, H, W]; image j depends only on (seed, j) (one shard of ``rgm generate``)."""
        family = get_family(self.generator.kind)
        return torch.from_numpy(family.draw(self.generator, n, seed=seed, batch_size=batch_size,
                                            sampler=self.sampler))

    def forward(self, requests: Tensor) -> Tensor:
        """Rows ``(n, seed)`` (int64 [R, 2]) -> their images, concatenated in row order (uint8 [sum n, C, H, W])."""
        images = [self.sample(int(n), seed=int(seed)) for n, seed in requests.reshape(-1, 2).tolist()]
        return torch.cat(images) if images else torch.empty((0, *self.image_shape), dtype=torch.uint8)

    def __reduce__(self) -> tuple:
        generator = self.generator
        return _rebuild, (generator.kind, generator.config.to_dict(), generator.state_dict(), self.sampler)


def _rebuild(kind: str, config: dict, state: dict[str, Tensor], sampler: str) -> GeneratorSampler:
    """Unpickling a :class:`GeneratorSampler`: the model rebuilt from its config, then its weights."""
    generator = build_model(kind, config)
    generator.load_state_dict(state)
    return GeneratorSampler(generator.eval(), sampler)


def log_generator(tracker: Tracker, checkpoint: str | Path, *, registered_model_name: str | None = None) -> str | None:
    """Log the generator checkpoint directory ``checkpoint`` as ``tracker``'s model; returns its URI."""
    if not tracker.active:
        return None
    sampler = GeneratorSampler(load_checkpoint(checkpoint))
    digest = checkpoint_digest(checkpoint)
    record = read_checkpoint_config(checkpoint)
    tracker.set_tags({TAG_CHECKPOINT_DIGEST: digest})
    return tracker.log_torch_model(
        sampler, name=MODEL_NAME, inputs=("int64", (-1, 2)), outputs=("uint8", (-1, *sampler.image_shape)),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}",
                          f"rgm_ray=={__version__}"],
        registered_model_name=registered_model_name,
        metadata={"kind": record["kind"], "checkpoint_digest": digest, "sampler": sampler.sampler,
                  "entry_point": "mlflow.pytorch.load_model(uri).sample(n, seed=0) -> uint8 [n, C, H, W]"})
