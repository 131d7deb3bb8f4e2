"""Figures people would rather look at than read: image grids, histograms, reliability diagrams.

Matplotlib runs headless (Agg); every function writes a PNG atomically and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rgm_ray.store.atomic import atomic_path


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [n, C, H, W] -> one uint8 [H', W', C] mosaic (C = 1 or 3) with white padding."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty uint8 [n,C,H,W] array, got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, *, nrow: int | None = None, scale: int = 2) -> Path:
    """Save a PNG mosaic of ``images`` (nearest-neighbour upscaled by ``scale`` for visibility)."""
    from PIL import Image

    grid = image_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def _save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _figure(width: float = 5.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_histogram(series: dict[str, np.ndarray], path: str | Path, *, xlabel: str, title: str,
                   bins: int = 60, log_y: bool = False) -> Path:
    """Overlaid histograms of named 1-D arrays (e.g. log-weights of several sample sets)."""
    fig, ax = _figure()
    finite = [v[np.isfinite(v)] for v in series.values()]
    lo, hi = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for (name, _), values in zip(series.items(), finite):
        ax.hist(values, bins=edges, alpha=0.55, label=f"{name} (n={values.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def save_line_plot(x: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, *,
                   xlabel: str, ylabel: str, title: str, log_y: bool = False,
                   diagonal: bool = False) -> Path:
    """Named curves over a shared x (ESS vs alpha, reliability curves, loss curves)."""
    fig, ax = _figure()
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def save_grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], path: str | Path, *,
                      ylabel: str, title: str) -> Path:
    """Side-by-side bars: one group per label in ``groups``, one bar per named series in each group."""
    fig, ax = _figure(max(5.0, 0.6 * len(groups) * max(1, len(series)) ** 0.5 + 2), 3.6)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save_figure(fig, path)
