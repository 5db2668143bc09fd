"""Helpers shared by the test suites: free ports, deadlines, peers on PATH, dciodvfy."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import multiprocessing
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom import dcmread

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
# Every deadline of the suite is stretched by this factor, so the suite passes on a machine this many times
# slower than the one its deadlines were measured on. A deadline costs nothing when things go well: the wait
# ends as soon as the condition holds.
TIME_SCALE = float(os.environ.get("SEGNODE_TEST_TIME_SCALE", "3"))


def scaled(duration: float) -> float:
    """A deadline for something a test waits on, times TIME_SCALE (any unit: Playwright counts milliseconds).
    Not for a timeout the test is about (a node's DIMSE timeout, a sender that must give up quickly)."""
    return duration * TIME_SCALE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """`predicate()`'s first true value, polled up to `scaled(timeout_s)`."""
    timeout_s = scaled(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


async def async_wait_until(predicate: Callable[[], Awaitable[T]], timeout_s: float, what: str,
                           interval_s: float = 0.05) -> T:
    """`await predicate()`'s first true value, polled up to `scaled(timeout_s)`."""
    timeout_s = scaled(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not found:
        raise RuntimeError(f"{name} is not installed; run `make test` (it installs the real peers)")
    return found


def peer_env() -> dict[str, str]:
    """DCMTK and Orthanc honour TCP_NODELAY=1; without it each DIMSE round trip waits ~40 ms."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Dciodvfy:
    iod: str
    errors: list[str]
    warnings: list[str]


# dciodvfy's time grows much faster than an object's frame count: a 104-segment SEG took 0.8 s with 1,000
# frames, 10 s with 2,000 and 40-56 s with 3,239 on a 2-core machine. Tests make SEGs with fewer frames.
DCIODVFY_MAX_FRAMES = 1200


def dciodvfy(path: Path) -> Dciodvfy:
    """dicom3tools' verdict on a file; an object of more than DCIODVFY_MAX_FRAMES frames is refused at once
    (the test should build a smaller one: fewer slices) rather than left to run into the deadline."""
    frames = int(dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"]).get("NumberOfFrames") or 1)
    if frames > DCIODVFY_MAX_FRAMES:
        raise AssertionError(f"{path.name} has {frames} frames: dciodvfy would take minutes; keep test objects "
                             f"under {DCIODVFY_MAX_FRAMES} frames")
    proc = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=scaled(60))
    lines = proc.stderr.splitlines()
    return Dciodvfy(iod=lines[0].strip() if lines else "",
                    errors=[x for x in lines if x.startswith("Error")],
                    warnings=[x for x in lines if x.startswith("Warning")])


def sr_volumes_ml(sr: Any) -> list[float]:
    """Every Volume (SCT 118565006) NUM of a TID 1500 report, in content order."""
    found: list[float] = []

    def walk(items: Any) -> None:
        for item in items:
            code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "NUM" and code == "118565006":
                found.append(float(item.MeasuredValueSequence[0].NumericValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)
    walk(sr.ContentSequence)
    return found


def peak_rss_growth(fn: Callable[[], T]) -> tuple[T, int]:
    """`fn()` and by how many bytes this process's peak RSS rose above its RSS at the start (Linux, glibc: freed
    heap is handed back first, so that memory an earlier step left cached cannot hide an allocation, and the
    peak is reset through /proc/self/clear_refs)."""
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    start = status("VmRSS")
    result = fn()
    return result, status("VmHWM") - start


def in_fresh_process(fn: Callable[..., T], *args: object, timeout_s: float = 300) -> T:
    """`fn(*args)` in a new Python process (spawned, not forked), its result sent back: a memory measurement
    there sees a model process's allocator, not the state the rest of the test suite left in this one (its
    threads' malloc arenas, cached heap). `fn` must be a module-level function."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply_async(fn, args).get(scaled(timeout_s))
