"""The README's first example, for real: a real abdominal CT sent by storescu, ct-liver's SEG + SR in Orthanc.

The rules are config/examples/abdomen-liver.toml's, with the PACS named as destination.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from node.models_install import install_ct_liver
from node.synth.series import SeriesIds, write_datasets
from tests.builders import totalseg
from tests.peers.dcmtk import storescu
from tests.peers.helpers import REPO, dciodvfy, sr_volumes_ml, wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import FAST_RETRY, OrthancProcess, dicom_dest, results_in


def example_rules_to(destination: str) -> str:
    rules = (REPO / "config" / "examples" / "abdomen-liver.toml").read_text()
    return rules.replace("destinations = []", f'destinations = ["{destination}"]')


def test_a_real_abdominal_ct_gets_its_liver_segmented_and_sent_to_the_pacs(
        start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    models = tmp_path / "models"
    install_ct_liver(models)
    orthanc = OrthancProcess(tmp_path / "orthanc").start()
    orthancs.append(orthanc)
    config = f"{FAST_RETRY}\n[[destinations]]\n{dicom_dest(orthanc)}\n\n{example_rules_to('pacs')}"
    node = start_node(config=config, MODELS__DIR=str(models))
    ids = SeriesIds(patient_name="Anonymous^TotalSeg", patient_id="TS-EXAMPLE", body_part_examined="ABDOMEN",
                    series_description="Real abdominal CT")
    paths = write_datasets(tmp_path / "ct", totalseg.real_ct_datasets("example_ct_sm.nii.gz", ids))
    sent = storescu(node.dicom_port, paths)
    assert sent.returncode == 0, sent.stderr

    seg_info, sr_info = results_in(orthanc, timeout_s=240)
    # the PACS has the results a moment before the node records the job done (after the last delivery)
    wait_until(lambda: len(node.jobs("done")) == 1, 30, "the job recorded done after delivery")
    [job] = node.jobs("done")
    assert job["model"] == "ct-liver" and job["rule"] == "abdomen-liver"
    seg = dcmread(BytesIO(orthanc.file(seg_info[0]["ID"])))
    sr = dcmread(BytesIO(orthanc.file(sr_info[0]["ID"])))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    reference_ml = np.count_nonzero(totalseg.reference_mask(totalseg.LIVER)) * 27 / 1000
    assert sr_volumes_ml(sr) == [pytest.approx(reference_ml, rel=0.10)]
    for name, info in (("seg.dcm", seg_info[0]), ("sr.dcm", sr_info[0])):
        copy = tmp_path / name
        copy.write_bytes(orthanc.file(info["ID"]))
        assert dciodvfy(copy).errors == []
