"""Device choice, made once at start-up (never in the hot path)."""

from __future__ import annotations

import torch


def choose_device(setting: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device when present, else CPU; 'cpu' or 'cuda[:N]' as asked."""
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but CUDA is not available on this machine")
    return device


def release(device: torch.device) -> None:
    """Give cached GPU memory back between jobs."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
