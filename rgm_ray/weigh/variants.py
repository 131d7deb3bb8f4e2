"""Which weightings a pipeline run computes: one per generator with the configured classifier, plus,
for a family whose checkpoint carries its own discriminator (the GAN), that discriminator's calibrated
logit, so the report can set the trained-for-purpose classifier against the GAN's own critic.

A variant's ``name`` names its directories (``weights/<name>``, ``resampled/<name>``), its stages
(``weigh_<name>``, ``resample_<name>``) and its resampled set in the evaluation (``<name>_resampled``);
the classifier variant keeps the generator's own name, so runs without extra variants look as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from rgm_ray.models.registry import get_family
from rgm_ray.weigh.backbones import GAN_DISCRIMINATOR


@dataclass(frozen=True)
class WeighVariant:
    name: str
    generator: str  # registry name of the generator whose samples are weighed
    backbone: str | None = None  # None: the run's configured classifier backbone

    @property
    def label(self) -> str:
        """How tables name the variant."""
        display = get_family(self.generator).display_name
        return display if self.backbone is None else f"{display} (its discriminator)"


def weigh_variants(generators: tuple[str, ...] | list[str]) -> list[WeighVariant]:
    """The classifier variant of every generator, then the own-discriminator variants, in order."""
    variants = [WeighVariant(g, g) for g in generators]
    variants += [WeighVariant(f"{g}_discriminator", g, GAN_DISCRIMINATOR) for g in generators
                 if get_family(g).has_discriminator]
    return variants
