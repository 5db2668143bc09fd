"""A PNG encoder for RGB images (PNG spec, ISO/IEC 15948): zlib and struct, no imaging library."""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _DEPTH = 2, 8                # colour type 2 (truecolour), 8 bits per sample


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of a (height, width, 3) uint8 image; every scanline uses filter 0 (None).

    Raises ValueError when `rgb` is not a non-empty (height, width, 3) uint8 array.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_png needs a non-empty (height, width, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = 0                                          # the filter byte before each scanline
    rows[:, 1:] = rgb.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, _DEPTH, _RGB, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + \
        _chunk(b"IEND", b"")
