"""Whole-volume work in slabs of slices, so that memory grows with the study, not several times over.

A float or int64 temporary of a whole 800-slice CT is 0.8-1.6 GiB; the same temporary of one slab is
a few MiB. Everything here is exact: in-plane operations act on each slice alone, and sums, counts,
minima and maxima combine across slabs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

SLAB = 32                                   # slices per slab
FULL = np.ones((3, 3, 3), bool)             # 26-connectivity


def slabwise(fn: Callable[..., torch.Tensor], *volumes: torch.Tensor) -> torch.Tensor:
    """`fn` (an in-plane operation returning a bool mask) applied slab by slab into one bool volume."""
    first = volumes[0]
    out = torch.empty(first.shape, dtype=torch.bool, device=first.device)
    for s in range(0, first.shape[0], SLAB):
        out[s:s + SLAB] = fn(*(v[s:s + SLAB] for v in volumes))
    return out


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a bool volume: uint16 labels when they fit (half of int32), else int32."""
    out = np.empty(mask.shape, np.uint16)
    try:
        n = ndimage.label(mask, structure=FULL, output=out)
    except RuntimeError:                    # more than 65,535 components
        del out
        return ndimage.label(mask, structure=FULL)         # type: ignore[no-any-return]
    return out, int(n)


def counts(labels: np.ndarray, n: int, where: Callable[[slice], np.ndarray] | None = None) -> np.ndarray:
    """Voxels per label 0..n (where `where(slab)` is true, when given), without an int64 copy of the volume."""
    total = np.zeros(n + 1, np.int64)
    for s in range(0, labels.shape[0], SLAB):
        part = labels[s:s + SLAB]
        if where is not None:
            part = part[where(slice(s, s + SLAB))]
        total += np.bincount(part.ravel(), minlength=n + 1)[:n + 1]
    return total


def keep_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Bool volume of the voxels whose label is kept (`keep[label]`)."""
    out = np.empty(labels.shape, bool)
    for s in range(0, labels.shape[0], SLAB):
        out[s:s + SLAB] = keep[labels[s:s + SLAB]]
    return out


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (4-connected background), as `binary_fill_holes` with an in-plane structure."""
    plane = ndimage.generate_binary_structure(2, 1)
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndimage.binary_fill_holes(mask[k], structure=plane)
    return out
