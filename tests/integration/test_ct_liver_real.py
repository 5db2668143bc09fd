"""ct-liver on real CT (TotalSegmentator's example scans), installed with the node's own installer.

The weights come from the pinned pyliverlesionseg wheel (pip, cached under $SEGNODE_CACHE), converted
into a temporary models folder exactly as `segnode models install ct-liver` does.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from ai.ct_liver.model import CtLiver
from ai.errors import UnsuitableSeries
from ai.measure import dice
from ai.registry import ModelRegistry
from node.compute.pipeline import JobPipeline
from node.jobs.records import JobResults
from node.jobs.store import JobView
from node.models_install import install_ct_liver
from node.results.dicom import write_dicom_results
from node.synth.series import write_datasets
from tests.builders import totalseg
from tests.peers.helpers import dciodvfy, sr_volumes_ml


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    install_ct_liver(root)
    return root


@pytest.fixture(scope="module")
def ct_liver(models_dir: Path) -> CtLiver:
    return CtLiver(models_dir / "ct-liver", torch.device("cpu"))


def job_view(series_uid: str, study_uid: str) -> JobView:
    now = datetime.now(UTC)
    return JobView(id="job-liver", study_instance_uid=study_uid, intake_id="i", state="running", detail="",
                   progress=None, rule="liver", model="ct-liver", destinations=(), series_instance_uids=(series_uid,),
                   calling_ae="SCANNER", modality="CT", series_description="", instance_count=0, attempts=1,
                   results=JobResults(), created_at=now, updated_at=now)


def test_ct_liver_job_on_real_ct_matches_totalsegmentator(models_dir: Path, tmp_path: Path) -> None:
    """The node's own path: series files -> registry model -> SEG + SR; Dice and volume against the reference."""
    datasets = totalseg.real_ct_datasets("example_ct_sm.nii.gz")
    paths = write_datasets(tmp_path / "ct", datasets)
    series_uid, study_uid = str(datasets[0].SeriesInstanceUID), str(datasets[0].StudyInstanceUID)
    pipeline = JobPipeline(ModelRegistry(models_dir, torch.device("cpu")), [write_dicom_results])
    outcome = pipeline.run(job_view(series_uid, study_uid), {series_uid: [str(p) for p in paths]},
                           tmp_path / "out", lambda _f, _s: None)
    files = {f.kind: tmp_path / "out" / f.file for f in outcome.results.files}
    assert dciodvfy(files["seg"]).errors == []
    seg = dcmread(files["seg"])
    assert seg.SegmentSequence[0].SegmentLabel == "Liver"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"

    reference = totalseg.reference_mask(totalseg.LIVER)
    reference_ml = np.count_nonzero(reference) * 27 / 1000.0            # 3 mm voxels
    predicted = np.zeros(reference.shape, bool)
    uid_to_slice = {str(d.SOPInstanceUID): k for k, d in enumerate(sorted(
        datasets, key=lambda d: float(d.ImagePositionPatient[2])))}
    frames = seg.pixel_array.reshape(-1, *reference.shape[1:]).astype(bool)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        predicted[uid_to_slice[source]] |= frame
    assert dice(predicted, reference) >= 0.90
    assert sr_volumes_ml(dcmread(files["sr"])) == [pytest.approx(reference_ml, rel=0.10)]


def test_ct_liver_finds_the_whole_liver_up_to_the_top_of_the_abdomen_scan(ct_liver: CtLiver) -> None:
    """example_ct (abdomen + pelvis, 112 slices): example_ct_sm is its top 30 slices, where the package's own
    abdomen crop cut the upper liver away. Whole field of view: the top stays, and agrees with the reference."""
    labels = ct_liver.predict(totalseg.real_ct_volume("example_ct.nii.gz")) > 0
    reference = totalseg.reference_mask(totalseg.LIVER)
    top = labels[-reference.shape[0]:]
    assert dice(top, reference) >= 0.90
    top_3cm = slice(-10, None)
    assert np.count_nonzero(top[top_3cm]) >= 0.9 * np.count_nonzero(reference[top_3cm])


def test_chest_ct_without_liver_fails_with_no_liver_found(ct_liver: CtLiver) -> None:
    volume = totalseg.real_ct_volume("aorta_report/example_ct.nii.gz")      # chest CTA, 1.5 mm; liver below slice 60
    chest = dataclasses.replace(volume, voxels=volume.voxels[90:].copy(), source_uids=volume.source_uids[90:],
                                origin_mm=tuple(volume.origin_mm + 90 * volume.spacing_mm[0] * volume.normal))
    with pytest.raises(UnsuitableSeries, match="no liver found"):
        ct_liver.predict(chest)


def test_mr_and_too_thin_series_are_refused_with_a_reason(ct_liver: CtLiver) -> None:
    volume = totalseg.real_ct_volume("example_ct_sm.nii.gz")
    with pytest.raises(UnsuitableSeries, match="segments CT; this series is MR"):
        ct_liver.predict(dataclasses.replace(volume, modality="MR"))
    with pytest.raises(UnsuitableSeries, match="at least 3 slices"):
        ct_liver.predict(dataclasses.replace(volume, voxels=volume.voxels[:2].copy(),
                                             source_uids=volume.source_uids[:2]))
