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


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a host tensor to `device`. To CUDA it goes through pinned (page-locked) memory, so the copy is
    a DMA transfer that can overlap with work already queued; on the CPU the tensor is returned as is."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
