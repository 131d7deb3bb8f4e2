"""Facts about the machine a benchmark ran on, reported beside every number."""

from __future__ import annotations

import os
import platform

import torch


def machine_info() -> dict[str, object]:
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
