"""The per-batch semi-supervised objective: cross-entropy on labelled images plus a weighted
exactly-one semantic loss on unlabelled (generated, possibly resampled) images.

    loss = CE(labelled) + sl_weight * SL,   SL = sum_i v_i * semantic_loss(z_i),   sum_i v_i = 1

Normalisation of ``unl_weights``: the weights are renormalised *within the batch*,
``v_i = w_i / sum_batch w``. The SL term is then a weighted mean that is invariant to rescaling the
weights (raw importance weights and weights self-normalised over the whole pool give the same loss),
so ``sl_weight`` keeps the meaning it has in the unweighted objective, and uniform weights reproduce
the plain mean exactly. This is the self-normalised importance-sampling estimate of the SL
expectation under the reweighted distribution: biased by O(1/batch size), but far less noisy than
the unbiased ``n_pool * mean(w_tilde * SL)`` that pool-level normalisation would need.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch.nn import functional as F

from rgm_ray.ssl.semantic_loss import semantic_loss

KEY_LOSS = "loss"
KEY_CE = "ce"
KEY_SL = "sl"
KEY_ACC_LABELED = "acc_labeled"


def ssl_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_lab: torch.Tensor,
    y_lab: torch.Tensor,
    x_unl: torch.Tensor | None,
    *,
    sl_weight: float,
    unl_weights: torch.Tensor | None = None,
    sl_on_labeled: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Semi-supervised loss of one batch; returns ``(loss, parts)`` with the differentiable ``loss``.

    ``model`` maps images ``[B, ...]`` to logits ``[B, n_classes]``. Labelled and unlabelled images
    go through ONE forward pass (concatenated, labelled first), so batch-norm statistics come from
    the mixed batch as in the thesis's half-labelled/half-unlabelled batches.

    ``x_unl`` may be None or empty (unlabelled source ``none``): the SL term then covers only the
    labelled images if ``sl_on_labeled``, else it is 0. ``unl_weights`` (``[B_unl]``, non-negative,
    positive sum, any scale) weighs each unlabelled example's SL term; see the module docstring for
    the normalisation. ``sl_on_labeled`` adds the labelled images to the SL term, as the original
    Semantic-Loss code did: the term becomes the mean over the whole batch in which the unlabelled
    share, ``B_unl / (B_lab + B_unl)``, is spread according to ``unl_weights``.

    ``parts`` holds floats under ``KEY_LOSS``, ``KEY_CE``, ``KEY_SL`` (the SL term before
    ``sl_weight``) and ``KEY_ACC_LABELED`` (training accuracy on the labelled images).
    """
    if not isinstance(sl_weight, numbers.Real) or isinstance(sl_weight, bool) or not 0.0 <= sl_weight < math.inf:
        raise ValueError(f"sl_weight must be a finite number >= 0, got {sl_weight!r}")
    if x_lab.ndim < 2 or x_lab.shape[0] == 0:
        raise ValueError(f"x_lab must be a non-empty batch [B_lab, ...], got shape {tuple(x_lab.shape)}")
    if y_lab.shape != (x_lab.shape[0],) or y_lab.is_floating_point() or y_lab.is_complex():
        raise ValueError(
            f"y_lab must be integer class ids of shape ({x_lab.shape[0]},), got {y_lab.dtype} {tuple(y_lab.shape)}"
        )
    n_lab = x_lab.shape[0]
    n_unl = 0 if x_unl is None else x_unl.shape[0]
    if n_unl and x_unl.shape[1:] != x_lab.shape[1:]:
        raise ValueError(f"x_unl images {tuple(x_unl.shape[1:])} differ from x_lab images {tuple(x_lab.shape[1:])}")
    v_unl = _batch_normalised(unl_weights, n_unl)  # [B_unl] float64 summing to 1, checked before the forward pass

    x = torch.cat([x_lab, x_unl]) if n_unl else x_lab
    logits = model(x)  # [B_lab + B_unl, n_classes]
    if logits.ndim != 2 or logits.shape[0] != n_lab + n_unl:
        raise ValueError(f"model must return logits [{n_lab + n_unl}, n_classes], got {tuple(logits.shape)}")
    logits_lab = logits[:n_lab]
    y = y_lab.to(device=logits.device, dtype=torch.long)

    ce = F.cross_entropy(logits_lab, y)
    sl = _semantic_term(logits, n_lab, v_unl.to(device=logits.device, dtype=logits.dtype), sl_on_labeled)
    loss = ce + sl_weight * sl
    with torch.no_grad():
        acc = (logits_lab.argmax(dim=1) == y).to(logits.dtype).mean()
        # One device-to-host copy for all parts.
        values = torch.stack([loss, ce, sl, acc]).tolist()
    return loss, dict(zip((KEY_LOSS, KEY_CE, KEY_SL, KEY_ACC_LABELED), values))


def _semantic_term(logits: torch.Tensor, n_lab: int, v_unl: torch.Tensor, sl_on_labeled: bool) -> torch.Tensor:
    """SL term: ``v_unl``-weighted semantic loss of the unlabelled rows ``logits[n_lab:]``, or with
    ``sl_on_labeled`` the whole-batch mean in which the unlabelled share is spread by ``v_unl``."""
    n_unl = logits.shape[0] - n_lab
    per_example = semantic_loss(logits)  # [B_lab + B_unl]
    if sl_on_labeled:
        n_all = n_lab + n_unl
        v_lab = logits.new_full((n_lab,), 1.0 / n_all)
        return (torch.cat([v_lab, v_unl * (n_unl / n_all)]) * per_example).sum()
    if n_unl == 0:
        return logits.new_zeros(())
    return (v_unl * per_example[n_lab:]).sum()


def _batch_normalised(weights: torch.Tensor | None, n: int) -> torch.Tensor:
    """Per-example weights ``[n]`` rescaled to sum to 1 (uniform when ``weights`` is None), as constants.

    Computed in float64 on the CPU (where float64 always exists) so raw importance weights cannot
    overflow the sum.
    """
    if weights is None:
        return torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64)
    w = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
    if tuple(w.shape) != (n,):
        raise ValueError(f"unl_weights must have shape ({n},) to match x_unl, got {tuple(w.shape)}")
    if n == 0:
        return w
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("unl_weights must be finite, non-negative and have a positive sum")
    return w / w.sum()
