"""Identifiers of result objects: deterministic per job attempt, so a re-send carries the same UIDs."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid

MANUFACTURER = "Segnode"
SOFTWARE_VERSION = "0.1.0"


def result_uid(job_id: str, attempt: int, *parts: str) -> str:
    return generate_uid(entropy_srcs=[job_id, str(attempt), *parts])


@dataclass(frozen=True, slots=True)
class ResultIds:
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    seg_series_number: int
    sr_series_number: int

    @classmethod
    def for_series(cls, job_id: str, attempt: int, source_series_uid: str,
                   source_series_number: int | None) -> ResultIds:
        base = source_series_number if source_series_number and 0 < source_series_number < 100_000 else 0
        return cls(seg_series_instance_uid=result_uid(job_id, attempt, source_series_uid, "seg-series"),
                   seg_sop_instance_uid=result_uid(job_id, attempt, source_series_uid, "seg"),
                   sr_series_instance_uid=result_uid(job_id, attempt, source_series_uid, "sr-series"),
                   sr_sop_instance_uid=result_uid(job_id, attempt, source_series_uid, "sr"),
                   seg_series_number=base + 1000, sr_series_number=base + 2000)
