"""Pure core of the semi-supervised stage: labelled subsets, the ResNet, and the batch objective."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rgm_ray.seeding import numpy_rng, torch_generator
from rgm_ray.ssl.labels import balanced_label_subset, split_train_val
from rgm_ray.ssl.objective import KEY_ACC_LABELED, KEY_CE, KEY_LOSS, KEY_SL, ssl_loss
from rgm_ray.models.resnet import ResNet, ResNetConfig, preprocess
from rgm_ray.ssl.semantic_loss import semantic_loss




# ---------------------------------------------------------------- labelled subsets


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Shuffled labels with ``counts[c]`` examples of class ``c``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return numpy_rng(seed).permutation(labels)


@pytest.mark.parametrize("n", [10, 30, 37, 99])
def test_balanced_subset_counts(n: int) -> None:
    labels = _labels([20, 15, 30, 12, 25, 18, 40, 11, 14, 19])
    idx = balanced_label_subset(labels, n, seed=3)
    assert idx.dtype == np.int64 and idx.size == n
    assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.max() - counts.min() <= 1
    # The remainder goes to the smallest labels, so counts are non-increasing in the class id.
    assert np.all(np.diff(counts) <= 0)
    assert counts.sum() == n


def test_balanced_subset_determinism_and_nesting() -> None:
    labels = _labels([50] * 10)
    a = balanced_label_subset(labels, 40, seed=7)
    np.testing.assert_array_equal(a, balanced_label_subset(labels, 40, seed=7))
    assert not np.array_equal(a, balanced_label_subset(labels, 40, seed=8))
    # For a fixed seed, a smaller labelled set is a subset of a larger one.
    assert np.isin(balanced_label_subset(labels, 20, seed=7), a).all()


def test_balanced_subset_all_and_non_contiguous_labels() -> None:
    labels = _labels([3, 4, 5])
    np.testing.assert_array_equal(balanced_label_subset(labels, None, seed=0), np.arange(12))
    sparse = np.array([7, 2, 7, 2, 9, 9, 2])
    idx = balanced_label_subset(sparse, 3, seed=0)
    assert sorted(sparse[idx].tolist()) == [2, 7, 9]


@pytest.mark.parametrize(
    ("labels", "n"),
    [
        (np.array([0, 0, 1, 1, 2]), 6),  # class 2 has 1 example, needs 2
        (np.array([0, 1, 2, 0, 1, 2]), 2),  # fewer than the number of classes
        (np.array([0.0, 1.0]), 2),  # not integer labels
        (np.array([-1, 1]), 2),  # negative labels
        (np.zeros((2, 2), dtype=int), 2),  # not 1-D
        (np.array([0, 1]), 2.0),  # n not an int
    ],
)
def test_balanced_subset_errors(labels: np.ndarray, n: object) -> None:
    with pytest.raises(ValueError):
        balanced_label_subset(labels, n, seed=0)  # type: ignore[arg-type]


def test_split_train_val() -> None:
    train, val = split_train_val(100, 20, seed=1)
    assert val.size == 20 and train.size == 80
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert train.dtype == val.dtype == np.int64
    np.testing.assert_array_equal(val, split_train_val(100, 20, seed=1)[1])
    assert not np.array_equal(val, split_train_val(100, 20, seed=2)[1])
    assert split_train_val(5, 0, seed=0)[1].size == 0
    for bad in [(0, 0), (10, 10), (10, -1), (10, 2.5)]:
        with pytest.raises(ValueError):
            split_train_val(*bad, seed=0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ResNet


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_resnet_shapes(channels: int, size: int) -> None:
    model = ResNet(ResNetConfig(in_channels=channels, num_classes=10)).eval()
    x = torch.randn(2, channels, size, size, generator=torch_generator(0))
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    assert feats.shape == (2, 64) and logits.shape == (2, 10)
    torch.testing.assert_close(logits, model.head(feats))
    assert (feats >= 0).all()  # pooled after a ReLU


def test_resnet_parameter_count() -> None:
    # Thesis network (ResNet-14, 16/32/64): ~0.175M parameters.
    n_params = sum(p.numel() for p in ResNet(ResNetConfig()).parameters())
    assert 170_000 < n_params < 180_000
    # Hand count for 1 block of width 4 on 1 channel, 2 classes:
    # stem conv 1*4*9 + BN 2*4, block 2 * (4*4*9 + 2*4), head 4*2 + 2.
    tiny = ResNetConfig(in_channels=1, num_classes=2, blocks=(1,), widths=(4,))
    assert sum(p.numel() for p in ResNet(tiny).parameters()) == 36 + 8 + 2 * (144 + 8) + 10


def test_resnet_init_is_seeded() -> None:
    cfg = ResNetConfig(in_channels=1, blocks=(1, 1), widths=(4, 8))
    a, b, c = ResNet(cfg, seed=1), ResNet(cfg, seed=1), ResNet(cfg, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_resnet_rejects_wrong_input() -> None:
    model = ResNet(ResNetConfig(in_channels=3))
    with pytest.raises(ValueError):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError):
        model(torch.zeros(3, 32, 32))


def test_resnet_config_round_trip_and_validation() -> None:
    cfg = ResNetConfig(in_channels=1, num_classes=7, blocks=(1, 3), widths=(8, 16))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ResNetConfig.from_dict(d) == cfg
    assert ResNetConfig(blocks=[2, 2, 2], widths=[16, 32, 64]) == ResNetConfig()  # lists normalised
    assert ResNet.kind == "resnet" and cfg.feature_dim == 16
    with pytest.raises(ValueError):
        ResNetConfig.from_dict({**d, "depth": 3})
    for bad in [
        dict(in_channels=0),
        dict(num_classes=1),
        dict(blocks=(2, 2), widths=(16, 32, 64)),
        dict(blocks=(), widths=()),
        dict(blocks=(2, 0, 2)),
        dict(widths=(16, 32.0, 64)),
    ]:
        with pytest.raises(ValueError):
            ResNetConfig(**bad)  # type: ignore[arg-type]


def test_preprocess_range() -> None:
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2)
    y = preprocess(x)
    assert y.dtype == torch.float32
    assert y.min().item() == -1.0 and y.max().item() == 1.0
    with pytest.raises(ValueError):
        preprocess(x.float())
    with pytest.raises(ValueError):
        preprocess(x[0])


# ---------------------------------------------------------------- objective


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch_generator(seed)
    x_lab = torch.randn(8, 1, 8, 8, generator=gen)
    y_lab = torch.arange(8) % 4
    x_unl = torch.randn(8, 1, 8, 8, generator=gen)
    return x_lab, y_lab, x_unl


def _tiny_resnet() -> ResNet:
    return ResNet(ResNetConfig(in_channels=1, num_classes=4, blocks=(1, 1), widths=(4, 8)), seed=0)


def _train(model: nn.Module, step_loss, steps: int = 15) -> list[float]:  # type: ignore[no-untyped-def]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = step_loss()
        loss.backward()
        opt.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize(("use_unl", "sl_weight"), [(False, 0.0), (True, 1.0), (True, 0.0005)])
def test_ssl_step_reduces_loss(use_unl: bool, sl_weight: float) -> None:
    x_lab, y_lab, x_unl = _batch()
    model = _tiny_resnet()
    history = _train(model, lambda: ssl_loss(model, x_lab, y_lab, x_unl if use_unl else None, sl_weight=sl_weight)[0])
    assert history[-1] < 0.7 * history[0]


def test_semantic_loss_alone_is_minimised() -> None:
    _, _, x_unl = _batch()
    model = _tiny_resnet()
    history = _train(model, lambda: semantic_loss(model(x_unl)).mean())
    assert history[-1] < 0.8 * history[0]


def test_parts_are_consistent() -> None:
    x_lab, y_lab, x_unl = _batch()
    model = _tiny_resnet()
    loss, parts = ssl_loss(model, x_lab, y_lab, x_unl, sl_weight=0.3)
    assert set(parts) == {KEY_LOSS, KEY_CE, KEY_SL, KEY_ACC_LABELED}
    assert parts[KEY_LOSS] == pytest.approx(loss.item())
    assert parts[KEY_LOSS] == pytest.approx(parts[KEY_CE] + 0.3 * parts[KEY_SL], rel=1e-6)
    assert 0.0 <= parts[KEY_ACC_LABELED] <= 1.0
    # Same forward pass as the model on the concatenated batch (train-mode batch-norm).
    logits = model(torch.cat([x_lab, x_unl]))
    assert parts[KEY_SL] == pytest.approx(semantic_loss(logits[8:]).mean().item(), rel=1e-5)
    assert parts[KEY_CE] == pytest.approx(nn.functional.cross_entropy(logits[:8], y_lab).item(), rel=1e-5)


def test_unlabelled_weights() -> None:
    x_lab, y_lab, x_unl = _batch()
    model = _tiny_resnet()
    per_example = semantic_loss(model(torch.cat([x_lab, x_unl]))[8:]).detach()  # [8]

    def sl(weights: torch.Tensor | None, on_labeled: bool = False) -> float:
        return ssl_loss(model, x_lab, y_lab, x_unl, sl_weight=1.0, unl_weights=weights, sl_on_labeled=on_labeled)[1][
            KEY_SL
        ]

    one_hot = torch.zeros(8)
    one_hot[5] = 3.0  # all mass on example 5, any scale
    assert sl(one_hot) == pytest.approx(per_example[5].item(), rel=1e-5)
    # Scale-invariant, and uniform weights reproduce the plain mean.
    w = torch.rand(8, generator=torch_generator(1)) + 0.1
    assert sl(w) == pytest.approx(sl(1e6 * w), rel=1e-6)
    assert sl(torch.ones(8)) == pytest.approx(sl(None), rel=1e-6)
    assert sl(w) == pytest.approx((w / w.sum() @ per_example).item(), rel=1e-5)
    # Zero weights on most examples still give finite gradients.
    model.zero_grad()
    loss, _ = ssl_loss(model, x_lab, y_lab, x_unl, sl_weight=1.0, unl_weights=one_hot)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_sl_on_labeled_and_missing_unlabelled() -> None:
    x_lab, y_lab, x_unl = _batch()
    model = _tiny_resnet()
    all_logits = model(torch.cat([x_lab, x_unl]))
    _, parts = ssl_loss(model, x_lab, y_lab, x_unl, sl_weight=1.0, sl_on_labeled=True)
    assert parts[KEY_SL] == pytest.approx(semantic_loss(all_logits).mean().item(), rel=1e-5)
    # No unlabelled source: SL is 0, or over the labelled images only.
    for x_none in (None, x_unl[:0]):
        _, parts = ssl_loss(model, x_lab, y_lab, x_none, sl_weight=1.0)
        assert parts[KEY_SL] == 0.0 and parts[KEY_LOSS] == pytest.approx(parts[KEY_CE])
    _, parts = ssl_loss(model, x_lab, y_lab, None, sl_weight=1.0, sl_on_labeled=True)
    assert parts[KEY_SL] == pytest.approx(semantic_loss(model(x_lab)).mean().item(), rel=1e-5)


def test_ssl_loss_errors() -> None:
    x_lab, y_lab, x_unl = _batch()
    model = _tiny_resnet()
    bad_calls = [
        dict(sl_weight=-1.0),
        dict(sl_weight=float("nan")),
        dict(sl_weight=1.0, unl_weights=torch.ones(3)),
        dict(sl_weight=1.0, unl_weights=torch.zeros(8)),
        dict(sl_weight=1.0, unl_weights=-torch.ones(8)),
        dict(sl_weight=1.0, unl_weights=torch.full((8,), float("inf"))),
    ]
    for kwargs in bad_calls:
        with pytest.raises(ValueError):
            ssl_loss(model, x_lab, y_lab, x_unl, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ssl_loss(model, x_lab, y_lab.float(), x_unl, sl_weight=1.0)
    with pytest.raises(ValueError):
        ssl_loss(model, x_lab, y_lab[:4], x_unl, sl_weight=1.0)
    with pytest.raises(ValueError):
        ssl_loss(model, x_lab, y_lab, x_unl[:, :, :4], sl_weight=1.0)
    with pytest.raises(ValueError):
        ssl_loss(model, x_lab[:0], y_lab[:0], x_unl, sl_weight=1.0)
