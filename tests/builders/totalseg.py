"""Real CTs with reference segmentations, offline: the `totalsegmentator==2.18.0` source release.

Its sdist (Apache-2.0) ships de-identified CT and MR volumes with TotalSegmentator's own
segmentations under `tests/reference_files/`. We fetch it once from the package registry with pip
(sha256-pinned), cache it outside the repository, and never commit it.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from functools import cache
from pathlib import Path

import numpy as np

from ai.ct_liver.model import file_sha256
from ai.volume import Volume, volume_from_datasets
from node.models_install import cache_dir
from node.synth.nifti import nifti_datasets, read_lps
from node.synth.series import SeriesIds

SDIST = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
_PREFIX = "totalsegmentator-2.18.0/tests/reference_files/"

# TotalSegmentator v2 "total" class ids (its map_to_binary.py) for the structures the suite judges.
LIVER = (5,)
LUNG = (10, 11, 12, 13, 14)
BONE = (*range(25, 51), *range(69, 79), 91, *range(92, 117))   # sacrum, vertebrae; humeri..hips; skull; ribs, sternum
COSTAL_CARTILAGE = (117,)


def fetch_sdist() -> Path:
    """The pinned sdist in the cache, downloaded with pip on first use."""
    target = cache_dir() / SDIST
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "totalsegmentator==2.18.0", "-d", str(target.parent)], check=True)
    digest = file_sha256(target)
    if digest != SDIST_SHA256:
        target.unlink()
        raise RuntimeError(f"{SDIST}: sha256 {digest} is not the pinned {SDIST_SHA256}; deleted, fetch again")
    return target


@cache
def reference_dir() -> Path:
    """`tests/reference_files/` of the sdist, extracted once into the cache."""
    out = cache_dir() / "totalsegmentator-2.18.0-reference"
    done = out / ".complete"
    if not done.exists():
        with tarfile.open(fetch_sdist()) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(_PREFIX) and m.isfile()]
            for m in members:
                m.name = m.name[len(_PREFIX):]
            tar.extractall(out, members=members, filter="data")
        done.touch()
    return out


def reference_file(name: str) -> Path:
    """e.g. reference_file("example_ct_sm.nii.gz")."""
    path = reference_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not among the TotalSegmentator reference files")
    return path


def real_ct_datasets(name: str = "example_ct_sm.nii.gz", ids: SeriesIds | None = None) -> list:
    """A real CT as a CT Image Storage series (fresh UIDs each call)."""
    return nifti_datasets(reference_file(name), ids or SeriesIds(
        patient_name="Anonymous^TotalSeg", patient_id="TS-EXAMPLE", series_description=f"Real CT {name}"[:64],
        body_part_examined="ABDOMEN"))


def real_ct_volume(name: str = "example_ct_sm.nii.gz") -> Volume:
    """The real CT as ai/ sees it after a trip through DICOM."""
    return volume_from_datasets(real_ct_datasets(name))


def reference_mask(ids: tuple[int, ...], name: str = "example_seg.nii.gz") -> np.ndarray:
    """Boolean mask of TotalSegmentator's classes `ids`, in ai/'s (slice, row, column) order."""
    labels = read_lps(reference_file(name), dtype=np.int16).array
    return np.isin(labels, ids)
