"""Batch-invariant network evaluation and the on-disk feature cache.

Why fixed chunks: CPU kernels pick different code paths for different batch sizes (a batch of 1 or
7 rows gives results that differ from a batch of 64 in the last bits), so a sample's weight would
depend on how Ray Data happened to cut its batches. Every network call here therefore runs on
chunks of exactly ``chunk`` rows, the last one zero-padded; rows do not interact in eval mode, so a
row's output is the same whatever batch, position or worker it arrives in -- bit for bit, which the
tests check. Training-time features and scoring-time features go through the same function, so the
weights the scorers write equal the out-of-fold logits the calibration was measured on.

Cache: features of the frozen backbones are stored once per (backbone weights, input set, selected
ids) as ``<dir>/<name>-<key>.npy``; a re-run with other folds, seed or head settings reuses them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rgm_ray.store.atomic import atomic_path

DEFAULT_CHUNK = 64


@torch.no_grad()
def apply_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, chunk: int = DEFAULT_CHUNK,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``fn`` over ``x`` in zero-padded chunks of exactly ``chunk`` rows; result on the CPU, ``[len(x), ...]``."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    out = []
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk]
        rows = part.shape[0]
        if rows < chunk:
            part = torch.cat([part, part.new_zeros((chunk - rows, *part.shape[1:]))])
        out.append(fn(part.to(device))[:rows].cpu())
    if not out:
        raise ValueError("apply_in_chunks got no rows")
    return torch.cat(out)


def extract_features(backbone: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, *,
                     chunk: int = DEFAULT_CHUNK, device: torch.device | str = "cpu",
                     progress: Callable[..., object] | None = None, desc: str = "features") -> np.ndarray:
    """Backbone outputs for uint8 images ``[n, C, H, W]``, as a NumPy array ``[n, ...]``."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{desc}: need a non-empty uint8 [n, C, H, W] array, got {images.dtype} {images.shape}")
    # Slabs of whole chunks keep the progress bar moving without changing any result.
    slab = chunk * 16
    bar = progress(total=len(images), desc=desc, unit="img") if progress else None
    parts = []
    for start in range(0, len(images), slab):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + slab]))
        parts.append(apply_in_chunks(backbone, x, chunk=chunk, device=device).numpy())
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    return np.concatenate(parts)


def feature_cache_key(*parts: str | bytes) -> str:
    """Hex key over the backbone digest, the input set's identity and the selected ids."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cached_features(cache_dir: str | Path | None, name: str, key: str,
                    compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """``(features, hit)``: load ``<cache_dir>/<name>-<key>.npy`` or compute and store it atomically."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{name}-{key}.npy"
    if path.is_file():
        return np.load(path), True
    features = compute()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, features)
    return features, False
