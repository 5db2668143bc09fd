"""A whole-body bundle's 104 segments reach a real Orthanc: SEG and SR as the node sent them, dciodvfy-clean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from node.synth.phantom import make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.builders.bundle_layouts import WHOLE_BODY_LABELS, build_layout_bundle
from tests.peers.dcmtk import storescu
from tests.peers.helpers import dciodvfy
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import FAST_RETRY, OrthancProcess, dicom_dest, results_in

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_a_104_segment_seg_and_its_sr_are_delivered_to_orthanc_and_clean(
        start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_layout_bundle(models / "wholeBody_ct_segmentation", names=WHOLE_BODY_LABELS, soft=5, lung=15, bone=58,
                        weights="checkpoint", net="BlocksNet")
    orthanc = OrthancProcess(tmp_path / "orthanc").start()
    orthancs.append(orthanc)
    node = start_node(config=(f"{FAST_RETRY}\n[[destinations]]\n{dicom_dest(orthanc)}\n\n[[rules]]\nname = \"wb\"\n"
                              f"model = \"wholeBody_ct_segmentation\"\ndestinations = [\"pacs\"]\n"),
                      models__dir=str(models))
    ids = SeriesIds()
    # 8 slices, each holding ~100 of the segments: ~800 SEG frames, which dciodvfy checks in about a second
    # (its time grows much faster than the frame count: 32 slices took it 40-56 s)
    paths = write_datasets(tmp_path / "ct", phantom_datasets(make_phantom(slices=8, rows=96, seed=6), ids))
    assert storescu(node.dicom_port, paths).returncode == 0
    seg_info, sr_info = results_in(orthanc, timeout_s=120)
    job = node.wait_jobs("done", 1, timeout_s=60)[0]
    assert job["model"] == "wholeBody_ct_segmentation"
    copies = {}
    for kind, info in (("seg", seg_info[0]), ("sr", sr_info[0])):
        copies[kind] = tmp_path / f"{kind}-from-orthanc.dcm"
        copies[kind].write_bytes(orthanc.file(info["ID"]))
        errors = dciodvfy(copies[kind]).errors
        assert errors == [], (kind, errors[:5])
    seg = hd.seg.segread(copies["seg"])
    assert seg.number_of_segments == 104
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_instance_uid
    kidney = next(s for s in seg.SegmentSequence if s.SegmentLabel == "Kidney right")
    assert kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == \
        "Right"
    report = hd.sr.MeasurementReport.from_sequence([dcmread(copies["sr"])])       # the root content item
    assert len(report.get_volumetric_roi_measurement_groups()) == 104
