"""How much memory a job needs, and how much this machine can give one: a job that cannot fit fails up
front with the reason, instead of being killed by the kernel half-way."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ai.errors import UnsuitableSeries
from ai.segmenter import MemoryProfile

MIB = 2**20
# issue 18's bound on a job's peak RSS: the float32 volume 2.5 times over (the volume itself, masks, label
# maps, component labels, SEG frames) plus a fixed GiB for the interpreter, torch and the model; each model
# estimates its own (Segmenter.memory_profile), measured by bench/memory.py
BOUND = MemoryProfile(fixed_mb=1024, volume_factor=2.5)


def job_need_mb(voxels: int, profile: MemoryProfile = BOUND) -> int:
    """Estimated peak memory (MiB) of a job on a study of `voxels` voxels."""
    return profile.need_mb(voxels)


_M_MMAP_THRESHOLD = -3               # glibc's malloc.h
OWN_MAPPING_BYTES = 4 * 2**20


def return_freed_memory_promptly() -> bool:
    """In a process that runs jobs: serve each allocation of 4 MiB or more from its own mapping, which goes
    back to the kernel when freed. glibc's default raises that threshold after such a free (up to 32 MiB),
    so a job's slab-sized temporaries then come from the heap, whose freed middle is never returned: a model
    process kept 0.6 GiB it no longer used after the liver network, and its peak rose by 0.3 GiB. False
    where the C library is not glibc (nothing to tune)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, OWN_MAPPING_BYTES))
    except (OSError, AttributeError):
        return False


def _cgroup_limit_bytes() -> int | None:
    for path in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def machine_memory_mb() -> int:
    """Physical memory, or the container's limit when lower (MiB)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit_bytes()
    return (min(total, limit) if limit else total) // MIB


def job_memory_limit_mb(setting_mb: int, workers: int) -> int:
    """`[compute] max_job_memory_mb`, or (0) the machine's memory shared by the worker slots."""
    return setting_mb or machine_memory_mb() // max(1, workers)


def check_fits(slices: int, rows: int, columns: int, limit_mb: int, profile: MemoryProfile = BOUND,
               model: str = "") -> None:
    """UnsuitableSeries, with the figures, when a study of this size would need more than `limit_mb`."""
    need = job_need_mb(slices * rows * columns, profile)
    if limit_mb and need > limit_mb:
        raise UnsuitableSeries(f"the series ({slices} x {rows} x {columns} voxels) needs about {need / 1024:.1f} GiB "
                               f"of memory{f' with model {model}' if model else ''}; this node gives a job "
                               f"{limit_mb / 1024:.1f} GiB ([compute] max_job_memory_mb, default the machine's "
                               "memory / workers)")
