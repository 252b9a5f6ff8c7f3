"""Torch run-time choices shared by every aligner: device, precision, threads."""

from __future__ import annotations

import os

import numpy as np
import torch


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU with a sensible thread count."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    # torch defaults to one thread per *physical* core, which can undercount small
    # VMs; use every core we are allowed to run on unless the user said otherwise.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.device("cpu")


def precision(device: torch.device) -> torch.dtype:
    # Half precision halves memory traffic on GPUs; CPUs gain nothing from it.
    return torch.float16 if device.type == "cuda" else torch.float32


def to_numpy(features: torch.Tensor) -> np.ndarray:
    """Normalize in float32 and leave torch: the one exit point for aligner vectors."""
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)
