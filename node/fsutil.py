"""Durable file writes: after a crash a file is either absent or complete under its name."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

PART_PREFIX = "."
PART_SUFFIX = ".part"
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


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


def write_new(target: Path, data: bytes | memoryview, *, sync: bool = True) -> None:
    """Create `target` with `data`, durably (file and folder fsynced): FileExistsError if it exists.

    Linux writes it as an unnamed file (O_TMPFILE) and links it under its name only once complete and
    fsynced: no temp name, no rename, and nothing to clean up after a crash. Where O_TMPFILE is not
    supported (some file systems, other kernels) it is a temp file renamed into place, as write_atomic."""
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(".", os.O_WRONLY | _O_TMPFILE, 0o644, dir_fd=folder)
        except OSError:                       # edge: no O_TMPFILE here (EOPNOTSUPP, EISDIR, EINVAL)
            fd = -1
        if fd < 0:
            if target.exists():
                raise FileExistsError(errno.EEXIST, "file exists", str(target))
            write_atomic(target, data, sync=sync)
            return
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
            # linkat(2) with AT_SYMLINK_FOLLOW: os.link uses it when a dir_fd is given
            os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=folder, follow_symlinks=True)
        finally:
            os.close(fd)
        if sync:
            os.fsync(folder)
    finally:
        os.close(folder)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
