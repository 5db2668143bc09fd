"""Refused at the door: images that can never be segmented, hostile text and UIDs, sent by a real SCU.

The bytes go on the wire exactly as a broken scanner would write them (pynetdicom sends the files
undecoded), and every answer is checked from the sender's side.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.app import Node
from node.intake.wire.dimse import StoreStatus
from node.synth.series import write_datasets
from tests.peers.scu import send, send_files


def _file(tmp_path: Path, ds: Dataset, name: str) -> Path:
    path = write_datasets(tmp_path / name, [ds])[0]
    return path


async def test_half_the_pixels_is_refused_with_the_byte_counts(node: Node, ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    [status] = await send(node, [ds])
    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert status.ErrorComment == "Pixel Data holds 4096 bytes; the header declares 8192"
    assert list(node.spool.iter_instances()) == []


async def test_a_file_cut_inside_pixel_data_is_refused(node: Node, ct_series: list[Dataset], tmp_path: Path) -> None:
    path = _file(tmp_path, ct_series[0], "cut")
    path.write_bytes(path.read_bytes()[:-4000])
    [status] = await send_files(node, [path])
    assert status is not None and status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert status.ErrorComment == "Pixel Data holds 4192 bytes; the header declares 8192"
    assert list(node.spool.iter_instances()) == []


async def test_a_huge_matrix_with_few_pixels_is_refused(node: Node, ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.Rows = ds.Columns = 65535
    [status] = await send(node, [ds])
    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert status.ErrorComment == "Rows x Columns 65535 x 65535 outside 1..8192"


async def test_inconsistent_bit_depths_are_refused(node: Node, ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.HighBit = 15
    [status] = await send(node, [ds])
    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "HighBit 15" in status.ErrorComment


async def test_control_characters_are_replaced_and_the_sender_warned(node: Node, ct_series: list[Dataset],
                                                                     caplog) -> None:
    ds = ct_series[0]
    ds.PatientName = "Doe\x1b[2J^Jane\x07\r\n\x00X"
    [status] = await send(node, [ds])
    assert status.Status == StoreStatus.COERCED
    assert status.ErrorComment == "control characters replaced in PatientName"
    [stored] = list(node.spool.iter_instances())
    assert str(dcmread(stored).PatientName) == "Doe?[2J^Jane????X"
    assert "Doe" not in caplog.text and "\x07" not in caplog.text
    [job] = await node.store.list_jobs()
    assert job.patient_name == "Doe?[2J^Jane????X"


async def test_control_characters_in_a_long_comment_are_replaced_too(node: Node, ct_series: list[Dataset]) -> None:
    """A 5 KB text value (read lazily by the door) gets the same check as a short one."""
    ds = ct_series[0]
    ds.ImageComments = "y" * 5000 + "\x1b]0;owned\x07"
    [status] = await send(node, [ds])
    assert status.Status == StoreStatus.COERCED
    assert status.ErrorComment == "control characters replaced in ImageComments"
    [stored] = list(node.spool.iter_instances())
    assert dcmread(stored).ImageComments == "y" * 5000 + "?]0;owned?"


async def test_a_93_character_sop_instance_uid_gets_an_answer_not_an_abort(node: Node,
                                                                          ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.SOPInstanceUID = "1.2." + "3" * 89
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    statuses = await send(node, [ds, ct_series[1]])
    assert [s.Status for s in statuses] == [StoreStatus.CANNOT_UNDERSTAND, StoreStatus.SUCCESS]
    assert statuses[0].ErrorComment == "SOPInstanceUID is longer than 64 characters"
