"""DICOM UIDs checked before they are used as keys and file names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.errors import InvalidUID

# PS3.5 9.1: digits and dots, at most 64 characters. Leading zeros inside a component are invalid
# DICOM but common in the wild; they are harmless in a path, so they are accepted.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def check_uid(value: object, keyword: str) -> str:
    """Return the UID as a str, or raise InvalidUID saying what is wrong with it."""
    if value is None or value == "":
        raise InvalidUID(f"{keyword} is missing")
    text = str(value).rstrip("\x00 ")
    if len(text) > 64:
        raise InvalidUID(f"{keyword} is longer than 64 characters")
    if not _UID.fullmatch(text):
        raise InvalidUID(f"{keyword} has characters other than digits and dots")
    return text


@dataclass(frozen=True, slots=True)
class InstanceUIDs:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceUIDs:
        return cls(
            study_instance_uid=check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
            series_instance_uid=check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
            sop_instance_uid=check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
            sop_class_uid=check_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        )
