"""Durable file writes: after a crash a file is either absent or complete under its name."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

PART_PREFIX = "."
PART_SUFFIX = ".part"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes | memoryview, *, sync: bool = True) -> None:
    """Write `data` to a temp file beside `target`, fsync it, rename it over `target`, fsync the folder."""
    tmp = target.with_name(f"{PART_PREFIX}{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(target.parent)


def make_dirs(path: Path) -> None:
    """mkdir -p, with each new folder's entry made durable in its parent."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for new in reversed(missing):
        fsync_dir(new.parent)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def is_part_file(path: Path) -> bool:
    return path.name.startswith(PART_PREFIX) and path.name.endswith(PART_SUFFIX)
