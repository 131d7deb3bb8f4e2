"""Importance-weighted FID (Grover et al. 2019): FID of the weighted generated distribution, no resampling.

The generated set's Gaussian is fitted with self-normalised importance weights
w̃_i = exp(ℓ_i − logsumexp ℓ): weighted mean μ = Σ w̃_i x_i and the weighted covariance with NumPy's
reliability-weights correction (``np.cov(aweights=w̃)``, which equals the unweighted ``np.cov``
torch-fidelity uses when the weights are uniform). The Fréchet distance itself is torch-fidelity's.

With very skewed weights the fit rests on a handful of images; :func:`effective_sample_size` is
reported next to the score so such a number is not trusted blindly.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

KEY_WEIGHTED_FID = "weighted_fid"
KEY_WEIGHTED_FID_ESS = "weighted_fid_ess"


def normalised_weights(log_weights: np.ndarray) -> np.ndarray:
    """Self-normalised weights ``exp(ℓ − logsumexp ℓ)`` (float64, sum 1); ``-inf`` means weight 0."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if log_weights.ndim != 1 or log_weights.size == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D array, got shape {log_weights.shape}")
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise ValueError("log_weights contain NaN or +inf")
    if np.isneginf(log_weights).all():
        raise ValueError("every log_weight is -inf: all weights are zero")
    return np.exp(log_weights - logsumexp(log_weights))


def effective_sample_size(log_weights: np.ndarray) -> float:
    """Kish's ESS ``1 / Σ w̃_i²``: n for uniform weights, 1 when one image holds all the mass."""
    w = normalised_weights(log_weights)
    return float(1.0 / np.sum(w * w))


def weighted_statistics(features: torch.Tensor, log_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted ``{"mu", "sigma"}`` of ``features`` [n, d], in torch-fidelity's statistics format."""
    x = features.double().numpy()
    if x.ndim != 2 or x.shape[0] != np.shape(log_weights)[0]:
        raise ValueError(f"{np.shape(log_weights)} log_weights for features of shape {tuple(x.shape)}")
    w = normalised_weights(log_weights)
    if np.count_nonzero(w) < 2:
        raise ValueError("a weighted covariance needs at least two images with non-zero weight")
    return {"mu": w @ x, "sigma": np.cov(x, rowvar=False, aweights=w)}


def weighted_fid(generated: torch.Tensor, log_weights: np.ndarray, real: torch.Tensor) -> float:
    """Fréchet distance between the importance-weighted generated features and unweighted real features."""
    real_stats = fid_features_to_statistics(real.double())
    gen_stats = weighted_statistics(generated, log_weights)
    return float(fid_statistics_to_metric(gen_stats, real_stats, False)[KEY_METRIC_FID])
