"""Checks for a user-supplied Inception-V3 weights file (torch-fidelity's format).

The weights cannot be downloaded here, and torch-fidelity loads them with an unrestricted
``torch.load``; so the file is opened with ``weights_only=True`` first and a missing, foreign or
unsafe file fails with a message that says where the real one comes from.
"""

from __future__ import annotations

from pathlib import Path

import torch

INCEPTION_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")


def _where() -> str:
    """Where the weights come from. torch-fidelity is imported only here (and by the extractor that
    uses the weights): importing it pulls in torchvision's model zoo, ~1.5 s in every process that
    only wanted the domain network (each Ray Data scorer, each Tune trial)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return (f"it cannot be downloaded here (no internet). Fetch {URL_INCEPTION_V3} on a machine with "
            "internet access, copy it here and pass --inception-weights PATH")


def inception_weights_file(weights: str | Path | None, *, needed_by: str) -> Path:
    """The weights file's path, once given and a file (cheap: a stage checks it before writing anything)."""
    if weights is None:
        raise ValueError(f"{needed_by} needs --inception-weights PATH (torch-fidelity's Inception-V3 "
                         f"weights file); {_where()}")
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"--inception-weights {path}: no such file; {_where()}")
    return path


def check_inception_weights(weights: str | Path | None, *, needed_by: str) -> Path:
    """The validated path of torch-fidelity's Inception-V3 weights; ``needed_by`` names the flag."""
    path = inception_weights_file(weights, needed_by=needed_by)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted errors for foreign or truncated files
        raise ValueError(f"--inception-weights {path}: not a plain PyTorch state dict "
                         f"({exc.__class__.__name__}); {_where()}") from exc
    missing = [key for key in INCEPTION_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"--inception-weights {path}: not torch-fidelity's Inception-V3 weights "
                         f"(missing {', '.join(missing)}); {_where()}")
    return path
