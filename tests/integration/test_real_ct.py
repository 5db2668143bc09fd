"""ct-basic and the NIfTI converter on real CT: TotalSegmentator's example scans and reference segmentations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from ai.ct_basic import BONE, LUNGS, CtBasic
from ai.measure import dice
from ai.volume import volume_from_datasets
from tests.builders import totalseg

BONES = totalseg.BONE
BONES_AND_CARTILAGE = (*totalseg.BONE, *totalseg.COSTAL_CARTILAGE)     # as in the 267 mL


@pytest.fixture(scope="module")
def small_ct_labels() -> np.ndarray:
    return CtBasic().predict(totalseg.real_ct_volume("example_ct_sm.nii.gz"))


def test_converted_series_sits_where_the_nifti_says(tmp_path: Path) -> None:
    """Each voxel of the DICOM series lies at the LPS point the NIfTI affine gives, with the same HU."""
    path = totalseg.reference_file("example_ct_sm.nii.gz")
    volume = totalseg.real_ct_volume("example_ct_sm.nii.gz")
    img = nib.load(str(path))
    ras = np.asarray(img.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(50):
        k, r, c = (int(rng.integers(n)) for n in volume.voxels.shape)
        lps = volume.affine @ np.array([k, r, c, 1.0])
        ijk = np.linalg.solve(img.affine, np.array([-lps[0], -lps[1], lps[2], 1.0]))
        i, j, kk = (int(np.rint(x)) for x in ijk[:3])
        assert np.allclose(ijk[:3], (i, j, kk), atol=1e-3)
        assert volume.voxels[k, r, c] == pytest.approx(np.clip(ras[i, j, kk], -1024, 3071), abs=0.5)
    assert volume.row_direction == pytest.approx((1, 0, 0))       # columns toward patient left
    assert volume.column_direction == pytest.approx((0, 1, 0))    # rows toward posterior


def test_synth_from_nifti_writes_a_series(tmp_path: Path) -> None:
    path = totalseg.reference_file("example_ct_sm.nii.gz")
    run = subprocess.run([sys.executable, "-m", "node.cli", "synth", "--from-nifti", str(path),
                          "--out", str(tmp_path / "ct"), "--transfer-syntax", "rle"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    files = sorted((tmp_path / "ct").glob("*.dcm"))
    assert len(files) == 30
    volume = volume_from_datasets([dcmread(f) for f in files])
    assert volume.voxels.shape == (30, 101, 122)
    assert volume.spacing_mm == pytest.approx((3.0, 3.0, 3.0))


def test_synth_from_a_file_that_is_not_nifti_says_so(tmp_path: Path) -> None:
    bogus = tmp_path / "scan.nii.gz"
    bogus.write_bytes(b"not a volume")
    run = subprocess.run([sys.executable, "-m", "node.cli", "synth", "--from-nifti", str(bogus),
                          "--out", str(tmp_path / "ct")], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "cannot convert" in run.stderr and "scan.nii.gz" in run.stderr


def test_ct_basic_lungs_are_lungs_not_bowel_gas(small_ct_labels: np.ndarray) -> None:
    reference = totalseg.reference_mask(totalseg.LUNG)
    lungs = small_ct_labels == LUNGS
    assert dice(lungs, reference) >= 0.80
    gas = totalseg.reference_mask((6, 18, 19, 20))          # stomach, small bowel, duodenum, colon
    assert np.count_nonzero(lungs & gas) < 0.02 * np.count_nonzero(lungs)


def test_ct_basic_bone_includes_the_marrow(small_ct_labels: np.ndarray) -> None:
    bone = small_ct_labels == BONE
    assert dice(bone, totalseg.reference_mask(BONES)) >= 0.80
    assert dice(bone, totalseg.reference_mask(BONES_AND_CARTILAGE)) >= 0.75
    vertebrae = totalseg.reference_mask(tuple(range(26, 51)))
    assert np.count_nonzero(bone & vertebrae) >= 0.85 * np.count_nonzero(vertebrae)


def test_ct_basic_on_the_larger_scan_is_plausible() -> None:
    """The 112-slice abdomen + pelvis of the same patient: the same lung bases, a skeleton of litres."""
    volume = totalseg.real_ct_volume("example_ct.nii.gz")
    labels = CtBasic().predict(volume)
    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000
    lung_ml = np.count_nonzero(labels == LUNGS) * voxel_ml
    reference_lung_ml = np.count_nonzero(totalseg.reference_mask(totalseg.LUNG)) * 27 / 1000
    assert lung_ml == pytest.approx(reference_lung_ml, rel=0.15)
    assert 800 < np.count_nonzero(labels == BONE) * voxel_ml < 3000
