"""Importance-weight transforms and diagnostics on log-weights (rgm_ray.weigh.transforms)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rgm_ray.weigh.transforms import (
    DEFAULT_ALPHAS,
    KEY_ESS,
    KEY_ESS_FRAC,
    KEY_MAX_SHARE,
    KEY_N,
    KEY_N_SUPPORT,
    alpha_for_target_ess,
    clip,
    effective_sample_size,
    ess_alpha_key,
    ess_curve,
    flatten,
    log_total_weight,
    max_normalized_weight,
    self_normalize,
    validate_log_weights,
    weight_summary,
)

NEG_INF = -np.inf


def heavy_tailed_logits(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """Logits shaped like the thesis's VAE weights: a long right tail, a few samples dominating."""
    rng = np.random.default_rng(seed)
    return rng.gumbel(size=n) * 3.0 - 10.0


def naive_ess(lw: np.ndarray) -> float:
    w = np.exp(lw)
    return float(w.sum() ** 2 / (w**2).sum())


# --- validation -------------------------------------------------------------------------------


def test_validate_accepts_neg_inf_and_returns_float64():
    out = validate_log_weights(np.array([0, -1, 2], dtype=np.int32))
    assert out.dtype == np.float64
    assert validate_log_weights([0.0, NEG_INF]).tolist() == [0.0, NEG_INF]


def test_validate_reports_nan_count_and_first_index():
    with pytest.raises(ValueError, match=r"2 NaN value\(s\), first at index 1"):
        validate_log_weights([0.0, np.nan, 1.0, np.nan])


def test_validate_reports_posinf_count_and_first_index():
    with pytest.raises(ValueError, match=r"1 \+inf value\(s\), first at index 2"):
        validate_log_weights([0.0, 1.0, np.inf], name="logit")


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "empty"),
        ([NEG_INF, NEG_INF], "-inf everywhere"),
        (np.zeros((2, 2)), "1-D"),
        (np.array(["a"]), "real-valued"),
        (np.array([True, False]), "real-valued"),
    ],
)
def test_validate_rejects_degenerate_input(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_log_weights(bad)


def test_validate_without_support_allows_empty_and_excluded_shards():
    assert validate_log_weights([], require_support=False).size == 0
    assert validate_log_weights([NEG_INF], require_support=False).tolist() == [NEG_INF]
    with pytest.raises(ValueError, match="NaN"):
        validate_log_weights([np.nan], require_support=False)


# --- normalisation and ESS --------------------------------------------------------------------


def test_self_normalize_matches_naive_and_survives_extreme_logits():
    lw = np.array([0.3, -1.2, 2.0, NEG_INF])
    w = np.exp(lw)
    np.testing.assert_allclose(self_normalize(lw), w / w.sum(), rtol=1e-14)
    extreme = self_normalize([700.0, 700.0, -700.0])
    np.testing.assert_allclose(extreme, [0.5, 0.5, 0.0], atol=1e-300)
    assert math.isclose(float(extreme.sum()), 1.0)


def test_log_total_weight():
    assert math.isclose(log_total_weight([0.0, 0.0]), math.log(2.0))
    assert math.isclose(log_total_weight([800.0, NEG_INF]), 800.0)
    assert log_total_weight([]) == -math.inf
    assert log_total_weight([NEG_INF]) == -math.inf


def test_ess_of_equal_weights_is_n_exactly():
    assert effective_sample_size(np.full(1000, 3.7)) == 1000.0
    assert effective_sample_size([0.0, 0.0, NEG_INF]) == 2.0  # excluded samples do not count


def test_ess_of_one_dominant_weight_is_about_one():
    lw = np.zeros(10_000)
    lw[17] = 50.0
    assert 1.0 <= effective_sample_size(lw) < 1.0 + 1e-9
    assert math.isclose(max_normalized_weight(lw), 1.0, rel_tol=1e-15)


def test_ess_matches_naive_float64_on_moderate_values():
    lw = np.random.default_rng(1).normal(scale=2.0, size=5000)
    assert math.isclose(effective_sample_size(lw), naive_ess(lw), rel_tol=1e-10)
    w = np.exp(lw)
    assert math.isclose(max_normalized_weight(lw), w.max() / w.sum(), rel_tol=1e-12)


def test_ess_is_finite_and_shift_invariant_at_plus_minus_700():
    lw = np.random.default_rng(2).uniform(-700.0, 700.0, size=1000)
    lw[:3] = [700.0, -700.0, 699.5]
    ess = effective_sample_size(lw)
    assert math.isfinite(ess) and 1.0 <= ess <= lw.size
    # naive exp overflows here, but ESS only depends on differences of logits
    small = lw / 100.0
    assert math.isclose(effective_sample_size(small + 650.0), naive_ess(small), rel_tol=1e-10)
    assert math.isclose(effective_sample_size(small - 650.0), naive_ess(small), rel_tol=1e-10)


# --- flattening -------------------------------------------------------------------------------


def test_flatten_alpha_zero_is_uniform_on_the_support():
    lw = np.array([5.0, -3.0, NEG_INF, 0.1])
    flat = flatten(lw, 0)
    assert flat.tolist() == [0.0, 0.0, NEG_INF, 0.0]
    np.testing.assert_allclose(self_normalize(flat), [1 / 3, 1 / 3, 0.0, 1 / 3])


def test_flatten_scales_logits_and_keeps_zero_weights():
    lw = np.array([2.0, -4.0, NEG_INF])
    assert flatten(lw, 0.5).tolist() == [1.0, -2.0, NEG_INF]
    assert flatten(lw, 1).tolist() == lw.tolist()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, True, "0.5", float("nan")])
def test_flatten_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        flatten([0.0, 1.0], alpha)


def test_ess_curve_is_non_increasing_and_alpha_zero_gives_support_size():
    lw = heavy_tailed_logits()
    lw[:10] = NEG_INF
    alphas = np.linspace(0.0, 1.0, 21)
    curve = ess_curve(lw, alphas)
    values = [curve[a] for a in alphas]
    assert values[0] == lw.size - 10
    assert all(b <= a * (1 + 1e-12) for a, b in zip(values, values[1:]))
    assert values[-1] < values[0] / 10  # flattening matters for a heavy tail


# --- clipping ---------------------------------------------------------------------------------


def test_clip_max_value_on_weight_scale():
    lw = np.log(np.array([0.5, 2.0, 10.0]))
    np.testing.assert_allclose(np.exp(clip(lw, max_value=3.0)), [0.5, 2.0, 3.0])


def test_clip_quantile_caps_at_quantile_of_finite_logits():
    lw = np.array([0.0, 1.0, 2.0, 3.0, 4.0, NEG_INF])
    out = clip(lw, quantile=0.5)
    assert out.tolist() == [0.0, 1.0, 2.0, 2.0, 2.0, NEG_INF]
    assert clip(lw, quantile=1.0).tolist() == lw.tolist()


def test_clip_floor_is_lfiw_lower_clip_and_leaves_excluded_samples_out():
    lw = np.log(np.array([0.001, 0.5, 4.0]))
    out = clip(np.r_[lw, NEG_INF], floor=0.01)
    np.testing.assert_allclose(np.exp(out[:3]), [0.01, 0.5, 4.0])
    assert out[3] == NEG_INF


def test_clip_both_sides_and_identity():
    lw = np.log(np.array([0.001, 0.5, 40.0]))
    np.testing.assert_allclose(np.exp(clip(lw, max_value=10.0, floor=0.1)), [0.1, 0.5, 10.0])
    assert clip(lw).tolist() == lw.tolist()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_value": 1.0, "quantile": 0.9}, "at most one"),
        ({"max_value": 0.0}, "max_value"),
        ({"max_value": float("inf")}, "max_value"),
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
        ({"floor": -1.0}, "floor"),
        ({"floor": 2.0, "max_value": 1.0}, "above the upper clip"),
    ],
)
def test_clip_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        clip([0.0, 1.0], **kwargs)


# --- choosing alpha ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", [50.0, 1000.0, 15_000.0])
def test_alpha_for_target_ess_hits_target_within_tolerance(target):
    lw = heavy_tailed_logits()
    tol = 1e-4
    alpha = alpha_for_target_ess(lw, target, tol=tol)
    assert 0.0 <= alpha < 1.0
    assert effective_sample_size(flatten(lw, alpha)) >= target
    assert effective_sample_size(flatten(lw, min(alpha + tol, 1.0))) < target


def test_alpha_for_target_ess_returns_one_when_unflattened_weights_suffice():
    lw = heavy_tailed_logits()
    assert alpha_for_target_ess(lw, effective_sample_size(lw)) == 1.0
    assert alpha_for_target_ess(lw, 1.0) == 1.0


def test_alpha_for_target_ess_at_the_support_size_returns_zero():
    lw = np.array([0.0, 1.0, 2.0, NEG_INF])
    assert alpha_for_target_ess(lw, 3) == 0.0


@pytest.mark.parametrize("target, message", [(4, "exceeds the 3 samples"), (0, "positive"), (-1.0, "positive")])
def test_alpha_for_target_ess_rejects_unreachable_targets(target, message):
    with pytest.raises(ValueError, match=message):
        alpha_for_target_ess([0.0, 1.0, 2.0, NEG_INF], target)


# --- summary ----------------------------------------------------------------------------------


def test_weight_summary_is_flat_json_and_consistent():
    lw = heavy_tailed_logits(1000)
    lw[0] = NEG_INF
    summary = weight_summary(lw)
    json.dumps(summary)
    assert summary[KEY_N] == 1000 and summary[KEY_N_SUPPORT] == 999
    assert summary[KEY_ESS] == effective_sample_size(lw)
    assert math.isclose(summary[KEY_ESS_FRAC], summary[KEY_ESS] / 1000)
    assert summary[KEY_MAX_SHARE] == max_normalized_weight(lw)
    assert summary["log_weight_min"] == lw[1:].min() and summary["log_weight_max"] == lw.max()
    assert math.isclose(summary["log_weight_mean"], lw[1:].mean())
    for alpha in DEFAULT_ALPHAS:
        assert summary[ess_alpha_key(alpha)] == effective_sample_size(flatten(lw, alpha))
    assert [ess_alpha_key(a) for a in (0, 0.25, 1)] == ["ess_alpha_0", "ess_alpha_0.25", "ess_alpha_1"]
