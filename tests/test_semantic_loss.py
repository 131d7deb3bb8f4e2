"""The closed-form semantic loss against brute-force enumeration, and its numerical robustness."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rgm_ray.seeding import numpy_rng
from rgm_ray.ssl.semantic_loss import semantic_loss


def _brute_force(z: np.ndarray) -> float:
    """-log P(exactly one of n independent Bernoulli(sigmoid(z_i)) is 1), by enumerating all 2^n states in log space."""
    z = z.astype(np.float64)
    log_p = -np.logaddexp(0.0, -z)  # log sigmoid(z)
    log_q = -np.logaddexp(0.0, z)  # log (1 - sigmoid(z))
    states = np.array(list(itertools.product([0, 1], repeat=z.size)), dtype=bool)  # [2^n, n]
    log_prob = np.where(states, log_p, log_q).sum(axis=1)  # log P(state)
    # The enumeration is a full distribution: its mass must be 1.
    assert abs(np.logaddexp.reduce(log_prob)) < 1e-9
    exactly_one = states.sum(axis=1) == 1
    return -float(np.logaddexp.reduce(log_prob[exactly_one]))


@pytest.mark.parametrize("n", range(2, 11))
def test_matches_brute_force_enumeration(n: int) -> None:
    rng = numpy_rng(0, n)
    rows = [
        rng.normal(0.0, 3.0, size=n),
        rng.choice([-50.0, 50.0], size=n),  # extreme, mixed signs
        np.full(n, -50.0),
        np.full(n, 50.0),
        np.r_[50.0, np.full(n - 1, -50.0)],
    ]
    z = np.stack(rows)
    got = semantic_loss(torch.from_numpy(z)).numpy()
    want = np.array([_brute_force(row) for row in rows])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)  # relative, even for ~1e-21 losses
    got32 = semantic_loss(torch.from_numpy(z).float()).numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e4])
def test_finite_values_and_gradients_at_extremes(dtype: torch.dtype, scale: float) -> None:
    n = 10
    rows = torch.stack(
        [
            torch.full((n,), scale),  # all equal and huge
            torch.full((n,), -scale),
            torch.cat([torch.tensor([scale]), torch.full((n - 1,), -scale)]),  # one huge
            torch.linspace(-scale, scale, n),
            torch.zeros(n),
        ]
    ).to(dtype)
    z = rows.clone().requires_grad_(True)
    loss = semantic_loss(z)
    loss.sum().backward()
    assert loss.dtype == dtype and loss.shape == (rows.shape[0],)
    assert torch.isfinite(loss).all()
    assert torch.isfinite(z.grad).all()
    # Analytic gradient: sigmoid(z) - softmax(z); bounded in [-1, 1].
    expected = torch.sigmoid(rows) - torch.softmax(rows, dim=1)
    torch.testing.assert_close(z.grad, expected)


def test_confident_one_hot_has_near_zero_loss() -> None:
    z = torch.full((3, 10), -20.0, dtype=torch.float64)
    z[torch.arange(3), torch.tensor([0, 4, 9])] = 20.0
    loss = semantic_loss(z)
    assert (loss.abs() < 1e-6).all()
    # ... while an uncommitted prediction is penalised.
    assert semantic_loss(torch.zeros(1, 10))[0] > 1.0


@pytest.mark.parametrize("c", [-3.0, 0.0, 0.7, 5.0])
@pytest.mark.parametrize("n", [2, 10])
def test_all_equal_logits_analytic_value(c: float, n: int) -> None:
    # P(exactly one) = n p (1-p)^(n-1) with p = sigmoid(c).
    p = 1.0 / (1.0 + math.exp(-c))
    want = -(math.log(n) + math.log(p) + (n - 1) * math.log1p(-p))
    got = semantic_loss(torch.full((1, n), c, dtype=torch.float64)).item()
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_gradcheck() -> None:
    z = torch.from_numpy(numpy_rng(1).normal(0.0, 2.0, size=(4, 5))).requires_grad_(True)
    assert torch.autograd.gradcheck(semantic_loss, (z,))


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(10), torch.zeros(4, 1), torch.zeros(2, 3, 4), torch.zeros(4, 10, dtype=torch.long)],
)
def test_rejects_bad_input(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        semantic_loss(bad)
