"""Deterministic index selection for the semi-supervised stage: class-balanced labelled subsets and
a train/validation split.

Both return sorted ``int64`` index arrays, so the selection can be stored, compared and applied to
any array aligned with the labels.
"""

from __future__ import annotations

import numpy as np

from rgm_ray.seeding import numpy_rng

# Stream tags so the two selections draw independent streams even when given the same seed.
_SUBSET_STREAM = 1
_SPLIT_STREAM = 2


def balanced_label_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``n`` examples (all indices when ``n`` is None).

    Each of the ``k`` classes present in ``labels`` gets ``n // k`` examples; when ``k`` does not
    divide ``n`` the remaining ``n % k`` examples go one each to the classes with the smallest label
    values, so counts differ by at most one and do not depend on the seed.

    Each class is shuffled with its own stream ``(seed, class)`` and the subset takes a prefix of
    that order, so for a fixed seed a smaller subset is contained in a larger one (the 1K-label run
    uses a subset of the 4K-label run's images).

    Raises ValueError if ``labels`` is not a 1-D array of non-negative ints, if ``n`` is smaller than
    the number of classes, or if a class has fewer examples than its share.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}")
    if n is None:
        return np.arange(labels.size, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    k = classes.size
    if not _is_int(n) or n < k:
        raise ValueError(f"n must be an int >= the number of classes ({k}), got {n!r}")
    base, remainder = divmod(int(n), k)
    quotas = np.full(k, base, dtype=np.int64)
    quotas[:remainder] += 1  # classes are sorted, so the smallest labels get the extras
    short = [(int(c), int(have), int(need)) for c, have, need in zip(classes, counts, quotas) if have < need]
    if short:
        raise ValueError(f"too few examples for a balanced subset of {n}; (class, have, need): {short}")
    picked = []
    for c, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == c)
        order = numpy_rng(seed, _SUBSET_STREAM, int(c)).permutation(members.size)
        picked.append(members[order[:quota]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def split_train_val(n_total: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n_total)`` into sorted ``(train_idx, val_idx)`` with ``len(val_idx) == val_size``.

    The validation set is a uniformly random subset drawn from the stream ``(seed, split)``.
    """
    if not _is_int(n_total) or n_total < 1:
        raise ValueError(f"n_total must be a positive int, got {n_total!r}")
    if not _is_int(val_size) or not 0 <= val_size < n_total:
        raise ValueError(f"val_size must be an int in [0, n_total) = [0, {n_total}), got {val_size!r}")
    order = numpy_rng(seed, _SPLIT_STREAM).permutation(int(n_total))
    val_idx = np.sort(order[:val_size]).astype(np.int64)
    train_idx = np.sort(order[val_size:]).astype(np.int64)
    return train_idx, val_idx


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
