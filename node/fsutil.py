"""Durable file writes: after a crash a file is either absent or complete under its name."""

from __future__ import annotations

import contextlib
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


def _temp_path(target: Path) -> Path:
    return target.with_name(f"{PART_PREFIX}{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")


def _write_temp(tmp: Path, data: bytes | memoryview, sync: bool) -> None:
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def write_atomic(target: Path, data: bytes | memoryview, *, sync: bool = True) -> None:
    """Write `data` to a temp file beside `target`, fsync it, rename it over `target`, fsync the folder."""
    tmp = _temp_path(target)
    try:
        _write_temp(tmp, data, sync)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(target.parent)


def write_new(target: Path, data: bytes | memoryview, *, sync: bool = True) -> None:
    """Create `target` with `data`, durably (file and folder fsynced), never replacing a file: FileExistsError
    if it exists. On return the file is complete under its name; on any error nothing is under it.

    Linux writes it as an unnamed file (O_TMPFILE) and links it under its name only once complete and
    fsynced: no temp name, no rename, nothing to clean up after a crash. Where that is unsupported (some
    file systems, no /proc) it is a temp file, fsynced, then linked under its name."""
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not _write_unnamed(folder, target, data, sync):
            _write_named(target, data, sync)
        if sync:
            try:
                os.fsync(folder)
            except OSError:                   # the name may not be durable: take it back, answer a failure
                with contextlib.suppress(OSError):
                    os.unlink(target.name, dir_fd=folder)
                raise
    finally:
        os.close(folder)


def _write_unnamed(folder: int, target: Path, data: bytes | memoryview, sync: bool) -> bool:
    """write_new with O_TMPFILE; False (nothing written) where O_TMPFILE or the /proc link is unsupported."""
    try:
        fd = os.open(".", os.O_WRONLY | _O_TMPFILE, 0o644, dir_fd=folder)
    except OSError:                           # edge: EOPNOTSUPP, EISDIR, EINVAL: no O_TMPFILE here
        return False
    try:
        _write_all(fd, data)
        if sync:
            os.fsync(fd)
        try:
            # linkat(2) with AT_SYMLINK_FOLLOW: os.link uses it when a dir_fd is given
            os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=folder, follow_symlinks=True)
        except FileExistsError:
            raise
        except OSError:                       # edge: no /proc (or no linkat through it)
            return False
    finally:
        os.close(fd)
    return True


def _write_named(target: Path, data: bytes | memoryview, sync: bool) -> None:
    """write_new through a temp file beside `target`, hard-linked under its name (or renamed where hard
    links are unsupported, after checking the name is free)."""
    tmp = _temp_path(target)
    try:
        _write_temp(tmp, data, sync)
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise
        except OSError:                       # edge: a file system without hard links
            if target.exists():
                raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def sync_existing(path: Path) -> None:
    """fsync a file that already exists, and its folder: another writer's copy, before answering for it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


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
