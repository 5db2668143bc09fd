"""The spool's durable write: a received instance is under its name whole, or not at all."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from node import fsutil
from node.intake.door.spool import Spool
from node.intake.door.uids import InstanceUIDs

DATA = bytes(range(256)) * 517            # 132 KB, not a multiple of any block size


def uids(n: int, series: str = "1.2.3.2") -> InstanceUIDs:
    return InstanceUIDs("1.2.3.1", series, f"1.2.3.4.{n}", "1.2.840.10008.5.1.4.1.1.2")


@pytest.fixture(params=["O_TMPFILE", "temp file and link"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways write_new makes a file: the unnamed file (Linux) and the fallback where it is unsupported."""
    if request.param == "O_TMPFILE":
        def no_fallback(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("write_new fell back to a temp file where O_TMPFILE works")
        monkeypatch.setattr(fsutil, "_write_named", no_fallback)
    else:
        monkeypatch.setattr(fsutil, "_O_TMPFILE", os.O_DIRECTORY)     # open() then fails with EISDIR
    return str(request.param)


def test_a_new_file_holds_exactly_the_data_and_nothing_else_is_left(tmp_path: Path, way: str) -> None:
    target = tmp_path / "a.dcm"
    fsutil.write_new(target, DATA)
    assert target.read_bytes() == DATA
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_an_existing_file_is_never_replaced(tmp_path: Path, way: str) -> None:
    target = tmp_path / "a.dcm"
    fsutil.write_new(target, b"first")
    with pytest.raises(FileExistsError):
        fsutil.write_new(target, DATA)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_a_write_that_fails_leaves_no_file_under_the_name(tmp_path: Path, way: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(fsutil.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        fsutil.write_new(tmp_path / "a.dcm", DATA)
    assert list(tmp_path.iterdir()) == []


def test_the_spool_keeps_the_first_copy_of_a_resent_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    first = spool.write_instance(uids(1), DATA)
    again = spool.write_instance(uids(1), b"a different body")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.path == first.path and again.size == len(DATA) and first.path.read_bytes() == DATA


def test_a_series_folder_removed_by_hand_is_made_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    first = spool.write_instance(uids(1), DATA)
    shutil.rmtree(first.path.parent.parent)
    second = spool.write_instance(uids(2), DATA)
    assert not second.duplicate and second.path.read_bytes() == DATA
    assert sorted(p.name for p in spool.iter_instances()) == ["1.2.3.4.2.dcm"]


def test_without_proc_the_file_is_written_the_other_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link

    def no_proc(src: str, dst: str, **kwargs: object) -> None:
        if str(src).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", src)
        real_link(src, dst, **kwargs)                          # type: ignore[arg-type]
    monkeypatch.setattr(fsutil.os, "link", no_proc)
    fsutil.write_new(tmp_path / "a.dcm", DATA)
    assert (tmp_path / "a.dcm").read_bytes() == DATA and [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_a_name_that_may_not_be_durable_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def folder_fsync_fails(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(fsutil.os, "fsync", folder_fsync_fails)
    with pytest.raises(OSError):
        fsutil.write_new(tmp_path / "a.dcm", DATA)
    assert list(tmp_path.iterdir()) == []


def test_a_resent_instance_is_made_durable_before_it_is_answered_for(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    spool.write_instance(uids(1), DATA)
    synced: list[bool] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)
    monkeypatch.setattr(fsutil.os, "fsync", counting)
    assert spool.write_instance(uids(1), DATA).duplicate
    assert sorted(synced) == [False, True]                     # the first copy's file and its folder


def test_the_same_instance_from_two_associations_at_once_is_never_answered_from_a_failed_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first writer links the name, then its folder fsync fails and it takes the name back. A second
    association sending the same instance meanwhile must not answer for that copy: it waits for the first
    write to end, then writes its own. Whatever it answers for is on disk."""
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    spool.write_instance(uids(0), DATA)                        # the series folder exists
    linked, second_done = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def first_writer_fails(fd: int) -> None:
        if threading.current_thread().name == "first" and stat.S_ISDIR(os.fstat(fd).st_mode):
            linked.set()                                       # the name is there now
            second_done.wait(timeout=1.0)                      # let the second association answer, if it can
            raise OSError(5, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(fsutil.os, "fsync", first_writer_fails)
    failures: list[BaseException] = []

    def first() -> None:
        try:
            spool.write_instance(uids(1), DATA)
        except OSError as exc:
            failures.append(exc)
    writer = threading.Thread(target=first, name="first")
    writer.start()
    assert linked.wait(timeout=5)
    answered = spool.write_instance(uids(1), DATA)           # the second association
    second_done.set()
    writer.join(timeout=5)
    assert len(failures) == 1                                  # the first was answered with a failure
    assert answered.path.read_bytes() == DATA                  # the second's answer stands on a file on disk
