"""Importance-weighted FID (Grover et al. 2019): FID of the weighted generated distribution, no resampling.

The generated set's Gaussian is fitted with self-normalised importance weights
w̃_i = exp(ℓ_i − logsumexp ℓ): weighted mean μ = Σ w̃_i x_i and the weighted covariance with NumPy's
reliability-weights correction (``np.cov(aweights=w̃)``, which equals the unweighted ``np.cov``
torch-fidelity uses when the weights are uniform). The Fréchet distance itself is torch-fidelity's.

With very skewed weights the fit rests on a handful of images; the Kish ESS
(``rgm_ray.weigh.transforms.effective_sample_size``) is reported next to the score (as
``KEY_WEIGHTED_FID_ESS``) so such a number is not trusted blindly. Normalisation and ESS are the
weigh stage's log-weight maths, so the ESS here is the one ``rgm weigh`` and ``rgm resample`` report.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from rgm_ray.weigh.transforms import self_normalize

KEY_WEIGHTED_FID = "weighted_fid"
KEY_WEIGHTED_FID_ESS = "weighted_fid_ess"


def weighted_statistics(features: torch.Tensor, log_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted ``{"mu", "sigma"}`` of ``features`` [n, d], in torch-fidelity's statistics format."""
    x = features.double().numpy()
    if x.ndim != 2 or x.shape[0] != np.shape(log_weights)[0]:
        raise ValueError(f"{np.shape(log_weights)} log_weights for features of shape {tuple(x.shape)}")
    w = self_normalize(log_weights)
    if np.count_nonzero(w) < 2:
        raise ValueError("a weighted covariance needs at least two images with non-zero weight")
    return {"mu": w @ x, "sigma": np.cov(x, rowvar=False, aweights=w)}


def weighted_fid(generated: torch.Tensor, log_weights: np.ndarray, real: torch.Tensor) -> float:
    """Fréchet distance between the importance-weighted generated features and unweighted real features."""
    real_stats = fid_features_to_statistics(real.double())
    gen_stats = weighted_statistics(generated, log_weights)
    return float(fid_statistics_to_metric(gen_stats, real_stats, False)[KEY_METRIC_FID])
