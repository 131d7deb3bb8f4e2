"""Exactly-one semantic loss (Xu et al. 2018) for semi-supervised classification.

The loss asks each unlabelled example to be put in exactly one class, treating the ``n`` class
outputs as independent Bernoulli variables ``p_i = sigmoid(z_i)``:

    L(z) = -log sum_i p_i prod_{j != i} (1 - p_j)

Expanding ``p_i = e^{z_i} / (1 + e^{z_i})`` and ``1 - p_j = 1 / (1 + e^{z_j})`` gives the closed form

    log sum_i p_i prod_{j != i} (1 - p_j) = logsumexp(z) - sum_j softplus(z_j).

Subtracting two large numbers there loses precision, so with ``m = z_k = max(z)`` and
``softplus(m) - m = softplus(-m)`` it is evaluated as

    L(z) = sum_{j != k} softplus(z_j) + softplus(-z_k) - logsumexp(z - m),

whose terms are all small when the prediction is confident. It is finite and accurate to a few
ulps (relative) for any finite logits, e.g. all at 1e4 in float32, or a one-hot +-50 where L ~ 1e-21. Its gradient, ``dL/dz_j = sigmoid(z_j) - softmax(z)_j``, lies in
[-1, 1].
"""

from __future__ import annotations

import torch


def semantic_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per-example exactly-one semantic loss for ``logits`` of shape ``[B, n]`` (``n >= 2``); returns ``[B]``.

    The loss is non-negative (up to rounding) and reaches 0 only in the limit of one logit at +inf
    and the others at -inf.
    """
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape [batch, n_classes >= 2], got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    # softplus(z) = log(1 + e^z) = logaddexp(z, 0): exact at every magnitude (no linear cut-over
    # threshold) and its gradient sigmoid(z) is correct everywhere, including z = 0.
    zero = logits.new_zeros(())
    m, k = logits.max(dim=1, keepdim=True)  # [B, 1] each
    is_max = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, k, True)  # [B, n], one True per row
    softplus_terms = torch.where(is_max, torch.logaddexp(-logits, zero), torch.logaddexp(logits, zero))
    return softplus_terms.sum(dim=1) - torch.logsumexp(logits - m, dim=1)
