"""Exact nearest neighbours by blocks: memory stays ``block x bank_block`` floats, never ``N x M``.

Candidates come from the matmul form ``|q|^2 + |b|^2 - 2 q.b`` (fast, float32); the distances of the
kept neighbours are then recomputed directly as ``sum (q - b)^2``, so an exact copy reports 0, not
the matmul's cancellation error.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

QUERY_BLOCK = 1024
BANK_BLOCK = 8192


def pixel_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``[N, C*H*W]`` in [0, 1]: the pixel space of the audit."""
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).float().div_(255.0)


def blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def squared_distances(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` squared L2 distances by the matmul form, clamped at 0 (float32)."""
    q, b = query.float(), bank.float()
    d2 = (q * q).sum(1, keepdim=True) + (b * b).sum(1) - 2.0 * (q @ b.T)
    return d2.clamp_min_(0.0)


def nearest_neighbours(query: torch.Tensor, bank: torch.Tensor, k: int, *, block: int = QUERY_BLOCK,
                       bank_block: int = BANK_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances ``[n, k]`` (float64, ascending) and bank indices ``[n, k]`` of each query
    row's ``k`` nearest bank rows."""
    if query.ndim != 2 or bank.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(f"need [n, d] and [m, d] arrays, got {tuple(query.shape)} and {tuple(bank.shape)}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}] (the bank size), got {k}")
    distances, indices = [], []
    for rows in blocks(len(query), block):
        q = query[rows].float()
        best_d = torch.full((len(q), 0), float("inf"))
        best_i = torch.zeros((len(q), 0), dtype=torch.int64)
        for cols in blocks(len(bank), bank_block):
            d2 = squared_distances(q, bank[cols])
            top_d, top_i = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
            merged_d, merged_i = torch.cat([best_d, top_d], 1), torch.cat([best_i, top_i + cols.start], 1)
            keep_d, keep = torch.topk(merged_d, min(k, merged_d.shape[1]), dim=1, largest=False)
            best_d, best_i = keep_d, torch.gather(merged_i, 1, keep)
        exact = ((q[:, None, :] - bank[best_i].float()) ** 2).sum(-1)  # [n, k]: direct, no cancellation
        order = torch.argsort(exact, dim=1, stable=True)
        distances.append(torch.gather(exact, 1, order).sqrt().double())
        indices.append(torch.gather(best_i, 1, order))
    return torch.cat(distances).numpy(), torch.cat(indices).numpy()


def near_copy_fraction(distances: np.ndarray, threshold: float) -> float:
    """Fraction of nearest-neighbour ``distances`` at or below ``threshold``."""
    distances = np.asarray(distances)
    if distances.size == 0:
        raise ValueError("no distances")
    return float(np.mean(distances <= threshold))
