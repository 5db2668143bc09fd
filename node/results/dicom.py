"""The result writer the worker runs after inference: SEG + SR per series, checked, written atomically."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset

from ai.segmenter import ModelCard
from node.compute.series import SeriesResult
from node.fsutil import make_dirs, write_atomic
from node.jobs.records import JobResults, JobView, ResultFile
from node.results.checks import check_seg, check_sr
from node.results.ids import ResultIds
from node.results.seg import build_segmentation
from node.results.sr import build_report


def encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode_checked(seg: hd.seg.Segmentation, sr: hd.sr.Comprehensive3DSR, source_series_instance_uid: str,
                   groups: int) -> tuple[bytes, bytes]:
    """Encode the SEG and its SR, and check the bytes decode to what was built (node.results.checks)."""
    segments = len(seg.SegmentSequence)
    seg_data, sr_data = encode(seg), encode(sr)
    check_seg(seg_data, seg.SOPInstanceUID, segments, source_series_instance_uid)
    check_sr(sr_data, sr.SOPInstanceUID, groups, seg.SOPInstanceUID, segments)
    return seg_data, sr_data


def write_dicom_results(job: JobView, folder: Path, results: list[SeriesResult], card: ModelCard) -> JobResults:
    make_dirs(folder)
    files = []
    for r in results:
        if not r.measurements:
            continue                                      # nothing found: no empty SEG
        ids = ResultIds.for_series(job.id, job.attempts, r.series_instance_uid,
                                   _int(r.sources[0].get("SeriesNumber")))
        seg = build_segmentation(r.sources, r.labels, card, ids, frame_numbers=r.volume.frame_numbers)
        sr = build_report(seg, r.sources, r.measurements, card, ids, job.id, job.attempts)
        encoded = encode_checked(seg, sr, r.series_instance_uid, len(r.measurements))
        for kind, ds, data in (("seg", seg, encoded[0]), ("sr", sr, encoded[1])):
            name = f"{kind}-{r.series_instance_uid}.dcm"
            write_atomic(folder / name, data)
            files.append(ResultFile(kind=kind, file=name, sop_instance_uid=str(ds.SOPInstanceUID),
                                    series_instance_uid=str(ds.SeriesInstanceUID),
                                    source_series_instance_uid=r.series_instance_uid))
    return JobResults(files=tuple(files))


def _int(value: object) -> int | None:
    try:
        return int(value)          # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
