"""The generator registry: lookups by name and kind, the deprecated spelling, and a tiny round trip per family."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rgm_ray.cli import cmd_bench
from rgm_ray.models import gan_training, training
from rgm_ray.models.checkpoint import MODEL_KINDS, load_checkpoint, read_checkpoint_config, save_checkpoint
from rgm_ray.models.gan import GAN, GANConfig
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.registry import (
    FAMILIES,
    GENERATOR_NAMES,
    check_sampler,
    default_sampler,
    family_for_kind,
    get_family,
    parse_generator_name,
)
from rgm_ray.models.resnet import ResNet
from rgm_ray.models.vae import VAE, VAEConfig
from rgm_ray.pipeline.presets import PRESETS, PipelineConfig, load_preset, section
from rgm_ray.pipeline.stages import DOMAIN_ASSET

DEMO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "rgm_ray" / "assets" / "demo"
# One tiny architecture per family (8x8 grey/RGB images, a few channels; the GAN's smallest size is 28x28).
TINY = {
    "vae": {"in_channels": 1, "image_size": 8, "latent_dim": 4, "base_channels": 4},
    "pixelcnn": {"in_channels": 3, "image_size": 8, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2,
                 "dropout": 0.0},
    "gan": {"in_channels": 3, "image_size": 28, "latent_dim": 4, "base_channels": 4, "spectral_norm": True,
            "loss": "hinge"},
}
COMMITTED = GENERATOR_NAMES  # every family has a demo checkpoint under rgm_ray/assets/demo/


def test_names_kinds_and_samplers():
    assert GENERATOR_NAMES == ("vae", "pixelcnn", "gan") == tuple(f.name for f in FAMILIES)
    vae, pixelcnn, gan = get_family("vae"), get_family("pixelcnn"), get_family("gan")
    assert (vae.display_name, vae.kind, vae.model_class, vae.config_class) == ("VAE", "vae", VAE, VAEConfig)
    assert (pixelcnn.display_name, pixelcnn.kind, pixelcnn.model_class, pixelcnn.config_class) == (
        "PixelCNN++", "pixelcnnpp", PixelCNNpp, PixelCNNppConfig)
    assert (gan.display_name, gan.kind, gan.model_class, gan.config_class) == ("GAN", "gan", GAN, GANConfig)
    assert vae.samplers == ("mean", "sample") and pixelcnn.samplers == ("cached", "naive") and gan.samplers == (
        "sample",)
    assert default_sampler("vae") == "mean" and default_sampler("pixelcnnpp") == pixelcnn.default_sampler == "cached"
    assert (vae.preset_section, vae.train_section) == ("vae", "train_vae")
    assert (pixelcnn.preset_section, pixelcnn.train_section) == ("pixelcnn", "train_pixelcnn")
    assert (gan.preset_section, gan.train_section) == ("gan", "train_gan")
    assert vae.train is pixelcnn.train is training.train and gan.train is gan_training.train_gan
    check_sampler("pixelcnn", "naive")
    with pytest.raises(ValueError, match="does not fit a vae checkpoint; choose from mean, sample"):
        check_sampler("vae", "cached")


def test_lookup_by_name_kind_and_the_deprecated_spelling():
    pixelcnn = get_family("pixelcnn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint kind is not a user's spelling: no warning
        assert get_family("pixelcnnpp") is pixelcnn and family_for_kind("pixelcnnpp") is pixelcnn
        assert parse_generator_name("vae") == "vae" and parse_generator_name("pixelcnn") == "pixelcnn"
    with pytest.warns(DeprecationWarning, match="'pixelcnnpp' is deprecated; use 'pixelcnn'"):
        assert parse_generator_name("pixelcnnpp") == "pixelcnn"
    for bad in ("diffusion", "resnet"):
        with pytest.raises(ValueError, match="known: vae, pixelcnn, gan$"):
            get_family(bad)
        with pytest.raises(ValueError, match="known: vae, pixelcnn, gan$"):
            parse_generator_name(bad)
    with pytest.raises(ValueError, match="not a generator checkpoint kind"):
        family_for_kind("pixelcnn")  # the public name is not the kind
    assert ResNet.kind in MODEL_KINDS and ResNet.kind not in GENERATOR_NAMES  # checkpointed, not a generator


def test_bench_model_flag_takes_public_names_and_notes_the_old_one(capsys):
    parser = argparse.ArgumentParser()
    cmd_bench.register(parser.add_subparsers())
    assert parser.parse_args(["bench", "generate"]).model == "pixelcnn"
    assert parser.parse_args(["bench", "generate", "--model", "vae"]).model == "vae"
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["bench", "generate", "--model", "pixelcnnpp"]).model == "pixelcnn"
    assert capsys.readouterr().err.strip() == ("rgm bench generate: note: generator name 'pixelcnnpp' is "
                                               "deprecated; use 'pixelcnn'")
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "generate", "--model", "resnet"])


def test_every_preset_has_every_family_section():
    assert set(TINY) == set(GENERATOR_NAMES), "add a tiny config for the new family"
    for preset in PRESETS:
        for family in FAMILIES:
            assert isinstance(section(load_preset(preset), family.preset_section), family.config_class)
            section(load_preset(preset), family.train_section)


def test_pipeline_runs_every_family_and_the_demo_has_their_checkpoints():
    assert PipelineConfig().generators == COMMITTED
    for preset in PRESETS:
        assert set(section(load_preset(preset), "pipeline").generators) == set(COMMITTED)
    # beside them the domain network (tests/test_domain.py checks it)
    assert sorted(p.name for p in DEMO_CHECKPOINTS.iterdir() if p.is_dir()) == sorted([*COMMITTED, DOMAIN_ASSET])


def test_committed_checkpoints_keep_their_kinds():
    for name in COMMITTED:
        record = read_checkpoint_config(DEMO_CHECKPOINTS / name / "checkpoint")
        assert family_for_kind(record["kind"]) is get_family(name)
    assert read_checkpoint_config(DEMO_CHECKPOINTS / DOMAIN_ASSET / "checkpoint")["kind"] == ResNet.kind


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_family_round_trips_a_checkpoint_and_draws_deterministically(name, tmp_path):
    family = get_family(name)
    torch.manual_seed(0)
    model = family.model_class(family.config_class.from_dict(TINY[name]))
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    assert json.loads((ckpt / "config.json").read_text())["kind"] == family.kind
    loaded = load_checkpoint(ckpt)
    assert type(loaded) is family.model_class and loaded.config == model.config
    c, s = TINY[name]["in_channels"], TINY[name]["image_size"]
    for sampler in family.samplers:
        images = family.draw(loaded, 3, seed=1, batch_size=2, sampler=sampler)
        assert images.dtype == np.uint8 and images.shape == (3, c, s, s)
        np.testing.assert_array_equal(images, family.draw(model, 3, seed=1, batch_size=2, sampler=sampler))
        assert not np.array_equal(images, family.draw(loaded, 3, seed=2, batch_size=2, sampler=sampler))
    defaults = family.draw(loaded, 3, seed=1)  # the family's default sampler and batch size
    np.testing.assert_array_equal(defaults, family.draw(loaded, 3, seed=1, batch_size=family.default_batch_size,
                                                        sampler=family.default_sampler))
    with pytest.raises(ValueError, match="does not fit"):
        family.draw(loaded, 1, seed=0, batch_size=1, sampler="typo")
