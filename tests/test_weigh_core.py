"""Pure parts of the weigh stage: calibration metrics, temperature scaling, cross-fitting, validation (no Ray)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from rgm_ray.models.checkpoint import WEIGHTS_FILE, checkpoint_digest, read_checkpoint_config, save_checkpoint
from rgm_ray.models.domain import DEFAULT_DOMAIN, DomainConfig, ensure_domain
from rgm_ray.models.extractors import FeatureExtractorSpec, build_feature_extractor
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.models.vae import VAE, VAEConfig
from rgm_ray.runtime import worker_count
from rgm_ray.store import IMAGE, SAMPLE_ID
from rgm_ray.tracking import NullTracker
from rgm_ray.weigh.backbones import BackboneSpec, build_backbone
from rgm_ray.weigh.calibration import (TEMPERATURE_BOUNDS, accuracy, brier_score, calibration_metrics,
                                       expected_calibration_error, fit_temperature, log_loss, reliability_curve,
                                       roc_auc, sigmoid)
from rgm_ray.weigh.classifier import ConvHead, HeadConfig, MLPHead, build_head, train_head
from rgm_ray.weigh.crossfit import GENERATED, REAL, assign_folds, plan_crossfit
from rgm_ray.weigh.inputs import ImagePool, check_compatible, noise_images, open_real
from rgm_ray.weigh.scoring import LogWeightScorer, decode_image_values
from rgm_ray.weigh.stage import DOMAIN_DIR, SCORING_CLUSTER, WeighConfig, _resolve_backbone
from rgm_ray.weigh.weigher import WeigherConfig, load_weigher, save_weigher


# --- calibration metrics -------------------------------------------------------------------------

def test_temperature_recovered_on_known_miscalibration(rng):
    true_logit = rng.normal(0.0, 2.0, 40000)
    labels = rng.random(true_logit.size) < sigmoid(true_logit)
    overconfident = 2.0 * true_logit  # p = sigmoid(2 t) while y ~ Bernoulli(sigmoid(t))
    before = calibration_metrics(overconfident, labels)
    temperature = fit_temperature(overconfident, labels)
    after = calibration_metrics(overconfident, labels, temperature=temperature)
    assert before["ece"] > 0.05
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert after["ece"] < 0.02 < before["ece"]
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"] and after["roc_auc"] == before["roc_auc"]  # T > 0 keeps the ranking


def test_temperature_stays_finite_on_separable_data_and_flattens_noise(rng):
    z = rng.normal(size=400)
    separable = fit_temperature(z, z > 0)  # plain maximum likelihood would send T to 0
    assert TEMPERATURE_BOUNDS[0] < separable < 1
    assert fit_temperature(z, z > 0, bounds=(1e-3, 1e3)) == pytest.approx(separable, rel=1e-6)
    assert fit_temperature(4 * z, z > 0) == pytest.approx(4 * separable, rel=1e-6)  # only the logit scale matters
    assert fit_temperature(z, rng.random(400) < 0.5) > 5  # no signal: flatten towards 0
    assert fit_temperature(np.zeros(10), np.arange(10) % 2) == 1.0


def test_roc_auc_matches_pairwise_count_with_ties(rng):
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)
    assert roc_auc([1.0, 2.0], [0, 1]) == 1.0


def test_small_metrics_by_hand():
    probs = np.array([0.05, 0.15, 0.95, 0.55])
    labels = np.array([0, 1, 1, 0])
    assert accuracy(probs, labels) == 0.5
    assert brier_score(probs, labels) == pytest.approx(np.mean([0.05**2, 0.85**2, 0.05**2, 0.55**2]))
    # bins of width 0.1: {0.05 -> y 0}, {0.15 -> y 1}, {0.55 -> y 0}, {0.95 -> y 1}
    assert expected_calibration_error(probs, labels) == pytest.approx((0.05 + 0.85 + 0.55 + 0.05) / 4)
    curve = reliability_curve(probs, labels)
    assert sum(curve["count"]) == 4 and curve["fraction_real"][3] is None and curve["fraction_real"][1] == 1.0
    assert reliability_curve([1.0], [1], bins=10)["count"][9] == 1  # p = 1 lands in the last bin
    assert log_loss([1000.0, -1000.0], [1, 1]) == pytest.approx(500.0)  # finite for huge logits


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_rejected_with_their_name(bad):
    z = np.array([0.1, bad, 0.3])
    with pytest.raises(ValueError, match=r"logits has 1 non-finite value.*index 1"):
        calibration_metrics(z, [0, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(z, [0, 1, 1])


def test_metric_inputs_are_validated():
    with pytest.raises(ValueError, match="empty"):
        calibration_metrics([], [])
    with pytest.raises(ValueError, match=r"only 0 \(generated\) and 1 \(real\)"):
        accuracy([0.2, 0.7], [0, 2])
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([1.5], [1])


# --- cross-fitting ---------------------------------------------------------------------------------

def test_folds_are_a_function_of_seed_and_id_only(rng):
    ids = rng.permutation(20000)
    folds = assign_folds(ids, seed=3, folds=3)
    assert np.array_equal(assign_folds(ids[::-1], seed=3, folds=3), folds[::-1])  # order-free
    assert np.array_equal(assign_folds(ids[:50], seed=3, folds=3), folds[:50])  # subset-free
    assert np.all(np.abs(np.bincount(folds) / ids.size - 1 / 3) < 0.02)
    assert not np.array_equal(assign_folds(ids, seed=4, folds=3), folds)
    assert not np.array_equal(assign_folds(ids, seed=3, folds=3, role=REAL), folds)


def test_plan_keeps_every_fold_out_of_its_own_model_and_balances():
    real, gen = np.arange(5000), np.arange(100, 1300)  # unbalanced pools, overlapping id ranges
    plan = plan_crossfit(real, gen, folds=3, seed=1, calibration_fraction=0.25)
    assert plan.real_ids.size == plan.gen_ids.size == 1200
    for split in plan.folds:
        k = split.fold
        assert np.all(assign_folds(split.test_gen, seed=1, folds=3, role=GENERATED) == k)
        assert np.all(assign_folds(split.test_real, seed=1, folds=3, role=REAL) == k)
        for fitted in (split.train_gen, split.calib_gen):
            assert np.all(assign_folds(fitted, seed=1, folds=3, role=GENERATED) != k)
        assert not set(split.train_gen) & set(split.calib_gen)
        for part in ("train", "calib", "test"):
            assert getattr(split, f"{part}_real").size == getattr(split, f"{part}_gen").size > 0
        assert 0.15 < split.calib_gen.size / (split.calib_gen.size + split.train_gen.size) < 0.35


@pytest.mark.parametrize("kwargs, message", [
    (dict(real=[], gen=[1, 2]), "real is empty"),
    (dict(real=[1, 2], gen=[]), "generated is empty"),
    (dict(real=[1, 1, 2], gen=[1, 2]), "unique"),
    (dict(real=range(100), gen=range(100), folds=1), "folds must be an integer >= 2"),
    (dict(real=range(5), gen=range(5), folds=2), "too few samples"),
])
def test_plan_rejects_bad_inputs(kwargs, message):
    real, gen = kwargs.pop("real"), kwargs.pop("gen")
    with pytest.raises(ValueError, match=message):
        plan_crossfit(np.asarray(real, dtype=np.int64), np.asarray(gen, dtype=np.int64), **kwargs)


# --- inputs, configuration, scoring plumbing -----------------------------------------------------

def _pool(name, shape, n):
    return ImagePool(name, name, shape, np.arange(n), lambda ids: np.zeros((len(ids), *shape), np.uint8))


def test_shape_mismatch_and_empty_pools_name_the_inputs():
    with pytest.raises(ValueError, match=r"--real a has \(1, 28, 28\), --samples b has \(3, 32, 32\)"):
        check_compatible(_pool("--real a", (1, 28, 28), 5), _pool("--samples b", (3, 32, 32), 5))
    with pytest.raises(ValueError, match="--samples b is empty"):
        check_compatible(_pool("--real a", (1, 28, 28), 5), _pool("--samples b", (1, 28, 28), 0))


def test_backbone_and_config_validation(tmp_path):
    with pytest.raises(ValueError, match="needs --inception-weights PATH"):
        BackboneSpec("inception")
    with pytest.raises(ValueError, match="no such file"):
        BackboneSpec("inception", str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain PyTorch state dict"):
        BackboneSpec("inception", str(junk))
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneSpec("vgg")
    with pytest.raises(ValueError, match="takes no weights path"):
        BackboneSpec("cnn", str(junk))
    with pytest.raises(ValueError, match="only applies to --backbone domain"):
        WeighConfig(backbone="cnn", domain_checkpoint="x")
    with pytest.raises(ValueError, match="calibration must be one of"):
        WeighConfig(calibration="isotonic")


def test_backbones_are_the_shared_feature_extractors_or_the_pixels(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "domain", ResNet(ResNetConfig(in_channels=1, num_classes=10), seed=0),
                                 meta={"dataset": "fashion-mnist"})
    domain = BackboneSpec("domain", str(checkpoint))
    assert domain.extractor == FeatureExtractorSpec("domain", str(checkpoint)) and domain.frozen_features
    assert domain.to_dict() == {"kind": "domain", "path": str(checkpoint)}  # weigher.json, reports: unchanged
    assert BackboneSpec.from_dict(domain.to_dict()) == domain
    assert domain.digest() == domain.extractor.digest() == checkpoint_digest(checkpoint)
    pixels = BackboneSpec("cnn")
    assert pixels.extractor is None and not pixels.frozen_features and pixels.digest() == "pixels"
    assert pixels.to_dict() == {"kind": "cnn", "path": None}
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(build_backbone(domain)(x), build_feature_extractor(domain.extractor)(x))
        assert build_backbone(domain)(x).shape == (3, 64) and torch.equal(build_backbone(pixels)(x), x)
    with pytest.raises(ValueError, match="expected uint8 images"):
        build_backbone(pixels)(x.float())
    vae = save_checkpoint(tmp_path / "vae", VAE(VAEConfig(in_channels=1, image_size=28, latent_dim=2,
                                                          base_channels=4)))
    with pytest.raises(ValueError, match="a 'vae' checkpoint, not a domain ResNet"):
        BackboneSpec("domain", str(vae))
    with pytest.raises(ValueError, match="needs a domain ResNet checkpoint directory"):
        FeatureExtractorSpec("domain", None)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        FeatureExtractorSpec("cnn", None)  # the pixel pseudo-backbone is weigh's, not a feature extractor


def test_ensure_domain_reuses_only_a_checkpoint_of_the_same_dataset_and_config(tmp_path):
    assert DEFAULT_DOMAIN == DomainConfig(epochs=1, batch_size=128, train_images=6400)  # weigh's historic default
    tiny = DomainConfig(epochs=1, batch_size=32, train_images=64, test_images=32)
    out = tmp_path / "domain"
    first = ensure_domain("fashion-mnist", out, tiny)
    assert first.trained and first.path == out and first.metrics["train_images"] == 64
    weights = (out / WEIGHTS_FILE).read_bytes()
    again = ensure_domain("fashion-mnist", out, tiny)
    assert not again.trained and again.metrics == first.metrics and (out / WEIGHTS_FILE).read_bytes() == weights
    reseeded = ensure_domain("fashion-mnist", out, dataclasses.replace(tiny, seed=1))
    assert reseeded.trained and read_checkpoint_config(out)["domain_config"]["seed"] == 1
    other = save_checkpoint(tmp_path / "other", ResNet(ResNetConfig(in_channels=1, num_classes=10), seed=0),
                            meta={"dataset": "cifar10", "domain_config": dataclasses.asdict(tiny)})
    assert ensure_domain("fashion-mnist", other, tiny).trained  # same config, other dataset: retrained
    assert read_checkpoint_config(other)["dataset"] == "fashion-mnist"


def test_the_stage_trains_or_reuses_its_domain_backbone_and_drops_its_rows(tmp_path):
    config = WeighConfig(domain=DomainConfig(epochs=1, batch_size=32, train_images=64, test_images=32))
    real = open_real("fashion-mnist")
    context = dict(root=None, device=torch.device("cpu"), tracker=NullTracker(), progress=None)
    spec, kept, notes = _resolve_backbone(config, real, tmp_path, **context)
    assert spec == BackboneSpec("domain", str(tmp_path / DOMAIN_DIR))
    assert notes[0].startswith(f"trained the domain backbone into {tmp_path / DOMAIN_DIR}")
    assert notes[1] == "excluded the 64 real images the domain backbone was trained on"
    assert kept.ids[0] == 64 and len(kept) == len(real) - 64
    _, _, notes = _resolve_backbone(config, real, tmp_path, **context)
    assert notes[0] == f"reused the domain backbone in {tmp_path / DOMAIN_DIR}"


def test_worker_pool_must_leave_a_cpu_for_reads():
    def scorers(resources, **cluster):
        return worker_count(dataclasses.replace(SCORING_CLUSTER, **cluster), resources, reserve_cpu=True)

    assert scorers({"CPU": 2.0}) == 2
    assert scorers({"CPU": 2.0}, workers=1, cpus_per_worker=1.0) == 1
    with pytest.raises(ValueError, match="hangs"):
        scorers({"CPU": 2.0}, workers=2, cpus_per_worker=1.0)
    with pytest.raises(ValueError, match="0 GPU"):
        scorers({"CPU": 8.0}, gpus_per_worker=1.0)
    assert scorers({"CPU": 8.0, "GPU": 4.0}, gpus_per_worker=1.0) == 4


def test_decode_image_values_checks_lengths():
    images = np.arange(2 * 12, dtype=np.uint8).reshape(2, 3, 2, 2)
    values = np.array([images[0].tobytes(), images[1].tobytes()], dtype=object)
    assert np.array_equal(decode_image_values(values, (3, 2, 2)), images)
    with pytest.raises(ValueError, match="image 1 of the batch has 11 bytes, expected 12"):
        decode_image_values(np.array([values[0], values[1][:-1]], dtype=object), (3, 2, 2))


def test_noise_baseline_is_seeded_grayscale():
    a, b = noise_images(4, (3, 8, 8), seed=1), noise_images(4, (3, 8, 8), seed=1)
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.array_equal(a[:, 0], a[:, 2]) and a.std() > 50
    with pytest.raises(ValueError, match="positive number"):
        noise_images(0, (1, 8, 8), seed=1)


# --- heads and the batch-invariant scorer ------------------------------------------------------

def test_heads_learn_a_separable_problem():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (96, 1, 12, 12), dtype=torch.uint8, generator=gen)
    images[::2] += 150  # real = bright
    y = torch.tensor([1.0, 0.0] * 48)
    for head, x in ((build_head("cnn", (1, 12, 12), HeadConfig(conv_width=4)), images),
                    (build_head("domain", (144,), HeadConfig(hidden=16)), images.flatten(1).float())):
        fit = train_head(head, (x[:64], y[:64]), (x[64:], y[64:]), HeadConfig(epochs=15, batch_size=16, lr=1e-2),
                         seed=0, fold=0)
        with torch.no_grad():
            logits = head(x[64:])
        assert ((logits > 0).float() == y[64:]).float().mean() == 1.0
        assert fit.history[fit.best_epoch]["calibration_loss"] == fit.best_calibration_loss < 0.3
    assert isinstance(head, MLPHead) and isinstance(build_head("cnn", (1, 8, 8), HeadConfig()), ConvHead)


def test_scorer_is_exactly_batch_invariant(tmp_path):
    """Plain torch batching can change the last bits (here: batches of 1 or 7 rows); the fixed chunks cannot."""
    checkpoint = save_checkpoint(tmp_path / "domain", ResNet(ResNetConfig(in_channels=1, num_classes=10), seed=0),
                                 meta={"dataset": "fashion-mnist"})
    heads = [MLPHead(64, 32), MLPHead(64, 32)]
    for k, head in enumerate(heads):
        torch.nn.init.normal_(head.hidden.weight, generator=torch.Generator().manual_seed(k))
    config = WeigherConfig(BackboneSpec("domain", str(checkpoint)), HeadConfig(hidden=32), (1, 28, 28), (64,),
                           seed=5, temperatures=(1.5, 0.75))
    plan = plan_crossfit(np.arange(40), np.arange(40), folds=2, seed=5)
    save_weigher(tmp_path / "weigher", config, heads, plan)
    scorer = LogWeightScorer(str(tmp_path / "weigher"))
    images = np.random.default_rng(0).integers(0, 256, (150, 1, 28, 28), dtype=np.uint8)
    ids = np.arange(1000, 1150)
    batch = {SAMPLE_ID: ids, IMAGE: np.array([im.tobytes() for im in images], dtype=object)}
    whole = scorer(batch)
    assert whole["log_weight"].dtype == np.float32 and set(whole["fold"]) == {0, 1}
    for size, rows in ((1, 10), (7, 150), (64, 150)):  # every call runs whole chunks, so batches of 1 are costly
        parts = [scorer({k: v[i:i + size] for k, v in batch.items()}) for i in range(0, rows, size)]
        assert np.array_equal(np.concatenate([p["log_weight"] for p in parts]), whole["log_weight"][:rows])
    # The driver's path (features, then one head per fold, then 1/T) gives the same numbers.
    model = load_weigher(tmp_path / "weigher")
    feats = model.features(torch.from_numpy(images))
    fold0 = whole["fold"] == 0
    expected = model.calibrate(0, model.raw_logits(0, feats[torch.from_numpy(np.flatnonzero(fold0))]))
    assert np.array_equal(whole["log_weight"][fold0], expected)
