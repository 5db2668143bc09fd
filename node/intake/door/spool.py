"""The spool: received instances as files, `<study>/<series>/<sop>.dcm`, written durably."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.errors import SpoolFull
from node.fsutil import free_bytes, is_part_file, make_dirs, sync_existing, write_new
from node.intake.door.uids import InstanceUIDs

logger = logging.getLogger(__name__)

_KNOWN_FOLDERS = 256


@dataclass(frozen=True, slots=True)
class SpoolWrite:
    path: Path
    size: int
    duplicate: bool          # the SOP Instance UID was already in the spool; the first copy is kept


class Spool:
    """Owns the spool folder: each received instance as `<study>/<series>/<sop>.dcm`, whole or not at all,
    fsynced before the SCP may answer Success; refuses writes below the free-space floor."""

    def __init__(self, root: Path, min_free_bytes: int, *, sync: bool = True) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._sync = sync
        self._folders: dict[Path, None] = {}          # insertion-ordered: the oldest is dropped first
        self._lock = threading.Lock()
        self._writing: dict[Path, threading.Event] = {}   # instances being written now, by path
        make_dirs(root)

    def path_for(self, uids: InstanceUIDs) -> Path:
        return self.root / uids.study_instance_uid / uids.series_instance_uid / f"{uids.sop_instance_uid}.dcm"

    def write_instance(self, uids: InstanceUIDs, data: bytes | memoryview) -> SpoolWrite:
        """Make the instance durable. Raises SpoolFull below the free-space floor, OSError on I/O errors.

        Associations sending the same instance at once take turns: the second waits until the first write
        has ended (a failed one takes its name back), then keeps that copy or writes its own."""
        target = self.path_for(uids)
        done = self._turn(target)
        try:
            return self._write(target, data)
        finally:
            with self._lock:
                del self._writing[target]
            done.set()

    def _turn(self, target: Path) -> threading.Event:
        """Wait until no other thread is writing `target`; the event this thread sets when it is done."""
        while True:
            with self._lock:
                pending = self._writing.get(target)
                if pending is None:
                    done = self._writing[target] = threading.Event()
                    return done
            pending.wait()

    def _write(self, target: Path, data: bytes | memoryview) -> SpoolWrite:
        if target.exists():
            return self._first_copy(target)
        if free_bytes(self.root) - len(data) < self.min_free_bytes:
            raise SpoolFull(f"free disk below the floor of {self.min_free_bytes // 2**20} MB")
        if target.parent not in self._folders:
            make_dirs(target.parent)
            self._remember(target.parent)
        try:
            try:
                write_new(target, data, sync=self._sync)
            except FileNotFoundError:               # edge: the folder was removed by hand since
                with self._lock:
                    self._folders.pop(target.parent, None)
                make_dirs(target.parent)
                write_new(target, data, sync=self._sync)
        except FileExistsError:                     # edge: written by another program since the check
            return self._first_copy(target)
        return SpoolWrite(target, len(data), duplicate=False)

    def _first_copy(self, target: Path) -> SpoolWrite:
        """A resent instance: the first copy is kept, and made durable before it is answered for (a kill
        between a write's link and its folder fsync leaves a name that may not be durable yet)."""
        if self._sync:
            sync_existing(target)
        return SpoolWrite(target, target.stat().st_size, duplicate=True)

    def _remember(self, folder: Path) -> None:
        """Series folders known to exist, so the next instance skips the checks (the most recent few)."""
        with self._lock:
            self._folders[folder] = None
            if len(self._folders) > _KNOWN_FOLDERS:
                del self._folders[next(iter(self._folders))]

    def sweep_partials(self) -> int:
        """Remove temp files a crash left behind; they were never acknowledged."""
        removed = 0
        for path in self.root.rglob(".*.part"):
            if is_part_file(path):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.warning("spool: removed %d partial file(s) left by an interrupted write", removed)
        return removed

    def iter_instances(self) -> Iterator[Path]:
        yield from self.root.glob("*/*/*.dcm")

