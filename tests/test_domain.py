"""The domain network: its training recipe (schedule, augmentation, determinism), the committed demo
network (rgm_ray/assets/demo/domain) and the pipeline's domain stage copying it. Nothing here trains
the committed network's recipe at full size."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from rgm_ray.models.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, load_weights, read_checkpoint_config,
                                      save_checkpoint)
from rgm_ray.models.domain import (KEY_EPOCH_ACCURACY, KEY_TEST_ACCURACY, DomainConfig, augment, learning_rate,
                                   predict_logits, train_domain_classifier, trained_as)
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.models.training import CHECKPOINT_DIR
from rgm_ray.pipeline import stages
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.presets import ASSETS, load_preset, section
from rgm_ray.seeding import numpy_rng
from rgm_ray.tracking import NullTracker
from rgm_ray.weigh.inputs import open_real
from rgm_ray.weigh.stage import WeighConfig, _resolve_backbone

COMMITTED = ASSETS / "demo" / stages.DOMAIN_ASSET / CHECKPOINT_DIR
QUICK = DomainConfig(epochs=2, batch_size=32, train_images=128, test_images=64)
RECIPE = dataclasses.replace(QUICK, schedule="cosine", warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1,
                             crop_padding=2, flip=True)


def test_the_default_schedule_is_the_constant_lr_and_cosine_warms_up_then_decays():
    assert all(learning_rate(QUICK, step, 10) == QUICK.lr for step in range(20))  # exactly lr: the quick recipe
    cosine = DomainConfig(epochs=3, lr=0.01, schedule="cosine", warmup_epochs=1.0)
    rates = [learning_rate(cosine, step, 10) for step in range(30)]
    assert rates[:10] == pytest.approx([0.001 * (i + 1) for i in range(10)])  # linear warm-up to lr
    assert rates[10] == 0.01 and all(a > b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.005 * (1 + math.cos(math.pi * 19 / 20)))  # towards 0 at the end
    warm_constant = DomainConfig(epochs=2, lr=0.01, warmup_epochs=0.5)
    assert [learning_rate(warm_constant, s, 4) for s in range(4)] == pytest.approx([0.005, 0.01, 0.01, 0.01])


def test_augment_shifts_and_mirrors_and_draws_nothing_when_off():
    images = np.zeros((200, 1, 28, 28), np.uint8)
    images[:, 0, 14, 20] = 255  # one bright pixel right of centre: its position shows the shift and the flip
    rng = numpy_rng(0, 1)
    state = rng.bit_generator.state
    assert augment(images, rng, padding=0, flip=False) is images and rng.bit_generator.state == state
    shifted = augment(images, numpy_rng(0, 1), padding=2, flip=True)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    _, _, ys, xs = np.nonzero(shifted == 255)
    assert len(ys) == len(images) and set(ys) == set(range(12, 17))  # every offset in [-2, 2] occurs, nothing lost
    assert set(xs) == set(range(18, 23)) | set(range(5, 10))  # right of centre, or mirrored to the left
    np.testing.assert_array_equal(shifted, augment(images, numpy_rng(0, 1), padding=2, flip=True))
    mirrored = augment(images, numpy_rng(0, 2), padding=0, flip=True)
    assert {tuple(np.argwhere(m[0] == 255)[0]) for m in mirrored} == {(14, 20), (14, 7)}


def test_the_recipe_trains_deterministically_and_records_its_learning_curve(fm_train, fmnist_test, tmp_path):
    first = train_domain_classifier(fm_train, fmnist_test, RECIPE, tmp_path / "a")
    again = train_domain_classifier(fm_train, fmnist_test, RECIPE, tmp_path / "b")
    quick = train_domain_classifier(fm_train, fmnist_test, QUICK, tmp_path / "quick")
    weights = {name: load_weights(tmp_path / name) for name in ("a", "b", "quick")}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])  # same seed, same weights
    assert not all(torch.equal(weights["a"][k], weights["quick"][k]) for k in weights["a"])  # the recipe acts
    for summary in (first, quick):
        assert len(summary[KEY_EPOCH_ACCURACY]) == 2 and summary[KEY_EPOCH_ACCURACY][-1] == summary[KEY_TEST_ACCURACY]
    assert first[KEY_EPOCH_ACCURACY] == again[KEY_EPOCH_ACCURACY]
    assert read_checkpoint_config(tmp_path / "a")["domain_config"] == dataclasses.asdict(RECIPE)


def test_a_record_from_before_the_recipe_fields_matches_its_config(tmp_path):
    old = {"epochs": 1, "batch_size": 128, "lr": 1e-3, "train_images": 6400, "test_images": None, "seed": 0}
    path = save_checkpoint(tmp_path / "old", ResNet(ResNetConfig(in_channels=1, num_classes=10)),
                           meta={"dataset": "fashion-mnist", "domain_config": old})
    assert trained_as(path, "fashion-mnist", DomainConfig(**old))  # the fields it lacks were at their defaults
    assert not trained_as(path, "fashion-mnist", DomainConfig(**old, flip=True))
    assert not trained_as(path, "cifar10", DomainConfig(**old))
    broken = save_checkpoint(tmp_path / "broken", ResNet(ResNetConfig(in_channels=1, num_classes=10)),
                             meta={"dataset": "fashion-mnist", "domain_config": {**old, "epochs": 0}})
    assert not trained_as(broken, "fashion-mnist", DomainConfig(**old))


@pytest.mark.parametrize("bad, message", [({"warmup_epochs": 2.0}, "warmup_epochs must be in"),
                                          ({"label_smoothing": 1.0}, "label_smoothing in"),
                                          ({"crop_padding": -1}, "crop_padding must be"),
                                          ({"schedule": "step"}, "domain.schedule must be")])
def test_recipe_fields_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        DomainConfig.from_dict({"epochs": 2, **bad})


def test_the_committed_network_is_the_demo_presets_and_reaches_92_percent(fmnist_test):
    demo = section(load_preset("demo"), "domain")
    record = read_checkpoint_config(COMMITTED)
    assert record["dataset"] == "fashion-mnist" and record["domain_config"] == dataclasses.asdict(demo)
    assert trained_as(COMMITTED, "fashion-mnist", demo)  # so `rgm demo --retrain` trains this very recipe
    metrics = record["metrics"]
    assert metrics[KEY_TEST_ACCURACY] >= 0.92 and metrics["test_images"] == len(fmnist_test) == 10_000
    curve = metrics[KEY_EPOCH_ACCURACY]
    assert curve[-1] == metrics[KEY_TEST_ACCURACY] and len(curve) == demo.epochs
    assert metrics["train_images"] == demo.train_images <= 30_000  # the weigh stage keeps the rest unseen
    assert sum(f.stat().st_size for f in COMMITTED.iterdir()) < 5 * 2**20
    torch.load(COMMITTED / WEIGHTS_FILE, map_location="cpu", weights_only=True)  # plain tensors: nothing unpickled
    model = load_checkpoint(COMMITTED)
    assert isinstance(model, ResNet)
    measured = float((predict_logits(model, fmnist_test.images).argmax(1) == fmnist_test.labels).mean())
    assert measured == pytest.approx(metrics[KEY_TEST_ACCURACY], abs=2e-4)  # re-measured, up to float ties


def _domain_stage(ctx: Context) -> stages.Stage:
    return next(stage for stage in stages.stages_for(ctx) if stage.name == "domain")


def test_the_demo_copies_the_committed_network_and_weigh_drops_its_rows(tmp_path):
    ctx = Context(preset_name="demo", preset=load_preset("demo"), run_dir=tmp_path / "run", track=False)
    stage = _domain_stage(ctx)
    assert not stage.is_complete(ctx)
    result = stage.run(ctx, NullTracker())
    out = ctx.path("domain")
    assert result.out == str(out) and stage.is_complete(ctx)
    assert (out / WEIGHTS_FILE).read_bytes() == (COMMITTED / WEIGHTS_FILE).read_bytes()
    assert read_checkpoint_config(out) == read_checkpoint_config(COMMITTED)
    assert result.metrics["origin"] == "committed checkpoint rgm_ray/assets/demo/domain (see its TRAINING.md)"
    assert stage.recorded_facts(ctx)[KEY_TEST_ACCURACY] == result.metrics[KEY_TEST_ACCURACY] >= 0.92
    real = open_real("fashion-mnist")
    _, kept, notes = _resolve_backbone(WeighConfig(domain_checkpoint=str(out)), real, tmp_path, root=None,
                                       device=torch.device("cpu"), tracker=NullTracker(), progress=None)
    train_images = section(ctx.preset, "domain").train_images
    assert notes == [f"excluded the {train_images} real images the domain backbone was trained on"]
    assert len(kept) == len(real) - train_images and kept.ids[0] == train_images


@pytest.fixture
def small_committed(tmp_path, fm_train, fmnist_test, monkeypatch):
    """A stand-in committed network under a temporary assets root: recorded as QUICK's but with other
    weights than QUICK trains (seed 7), so a copy and a training run are told apart by their bytes."""
    committed = tmp_path / "assets" / "demo" / stages.DOMAIN_ASSET / CHECKPOINT_DIR
    train_domain_classifier(fm_train, fmnist_test, dataclasses.replace(QUICK, seed=7), committed)
    record = json.loads((committed / CONFIG_FILE).read_text())
    (committed / CONFIG_FILE).write_text(json.dumps({**record, "domain_config": dataclasses.asdict(QUICK)}))
    monkeypatch.setattr(stages, "ASSETS", tmp_path / "assets")
    return committed


@pytest.mark.parametrize("retrain, config, copied", [(False, QUICK, True), (True, QUICK, False),
                                                     (False, dataclasses.replace(QUICK, seed=3), False)])
def test_the_stage_copies_only_without_retrain_and_for_the_committed_config(small_committed, tmp_path, retrain,
                                                                            config, copied):
    preset = {**load_preset("demo"), "domain": dataclasses.asdict(config)}
    ctx = Context(preset_name="demo", preset=preset, run_dir=tmp_path / "run", track=False, retrain=retrain)
    result = _domain_stage(ctx).run(ctx, NullTracker())
    same = (ctx.path("domain") / WEIGHTS_FILE).read_bytes() == (small_committed / WEIGHTS_FILE).read_bytes()
    assert same == copied
    assert result.metrics["origin"] == ("committed checkpoint rgm_ray/assets/demo/domain (see its TRAINING.md)"
                                        if copied else "trained in this run")
    assert trained_as(ctx.path("domain"), "fashion-mnist", config)
