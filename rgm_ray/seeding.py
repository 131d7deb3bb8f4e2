"""Explicit, hierarchical seeds: every random stage derives its streams from (seed, path...).

Deriving child seeds by hashing the path (not by drawing from a parent RNG) is what makes results
independent of how work is split: sample ``i`` of shard ``j`` gets the same stream whichever
worker, batch or run produces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch costs ~600 MB per process; numpy-only stages (resample) never load it
    import torch

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, *path: int) -> int:
    """Return a 64-bit seed for the stream named by ``(seed, *path)``; path items are non-negative ints."""
    if seed < 0 or any(p < 0 for p in path):
        raise ValueError(f"seeds and path indices must be non-negative, got seed={seed}, path={path}")
    state = np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & _MASK64


def torch_generator(seed: int, *path: int) -> "torch.Generator":
    """A CPU ``torch.Generator`` for ``(seed, *path)``.

    Noise is always drawn on the CPU and then moved, so samples do not depend on the device.
    """
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, *path))
    return gen


def numpy_rng(seed: int, *path: int) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) for ``(seed, *path)``."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *path)))
