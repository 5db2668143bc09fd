"""Results back in the PACS: a real Orthanc, real DCMTK, dciodvfy on what Orthanc holds."""

from __future__ import annotations

import signal
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.synth.phantom import BONE, LUNGS, make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.builders.certs import TestPKI
from tests.peers.dcmtk import storescu
from tests.peers.helpers import dciodvfy, wait_until
from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import FAST_RETRY, OrthancProcess, TlsFiles, dicom_dest, results_in


def config(dest: str, rule_dest: str = "pacs") -> str:
    return (f"{FAST_RETRY}\n[[destinations]]\n{dest}\n\n[[rules]]\nname = \"ct\"\nmodel = \"ct-basic\"\n"
            f"destinations = [\"{rule_dest}\"]\nmatch = {{ modality = [\"CT\"], min_slices = 10 }}\n")


def sr_volumes(sr: Dataset) -> dict[str, float]:
    """Tracking identifier -> Volume (mL), read from the TID 1500 content tree."""
    out: dict[str, float] = {}

    def walk(items, group: dict) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "TEXT" and name == "112039":
                group["id"] = item.TextValue
            if item.ValueType == "NUM" and name == "118565006":
                group["ml"] = float(item.MeasuredValueSequence[0].NumericValue)
            if item.ValueType == "CONTAINER" and name == "125007":     # Measurement Group
                g: dict = {}
                walk(item.ContentSequence, g)
                out[g["id"]] = g["ml"]
            elif "ContentSequence" in item:
                walk(item.ContentSequence, group)
    walk(sr.ContentSequence, {})
    return out


def phantom_series(tmp_path: Path, slices: int = 40) -> tuple[list[Path], SeriesIds, object]:
    ids = SeriesIds()
    p = make_phantom(slices=slices, rows=128, seed=3)
    return write_datasets(tmp_path / "ct", phantom_datasets(p, ids)), ids, p


def test_flagship_orthanc_forwards_segnode_segments_results_come_back(
        start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc")
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc)))
    orthanc.forward_to(node.dicom_port)
    orthanc.start()
    paths, ids, phantom = phantom_series(tmp_path)
    sent = storescu(orthanc.dicom_port, paths, called="ORTHANC")
    assert sent.returncode == 0, sent.stderr

    seg_info, sr_info = results_in(orthanc)
    assert len(seg_info) == len(sr_info) == 1
    seg = dcmread(BytesIO(orthanc.file(seg_info[0]["ID"])))
    sr = dcmread(BytesIO(orthanc.file(sr_info[0]["ID"])))
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == ids.study_instance_uid
    assert seg.PatientID == ids.patient_id
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ids.series_instance_uid
    assert seg.FrameOfReferenceUID == ids.frame_of_reference_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Body soft tissue", "Lungs", "Bone"]
    volumes = sr_volumes(sr)
    assert volumes["Lungs (ct-basic)"] == pytest.approx(phantom.volume_ml(LUNGS), rel=0.05)
    assert volumes["Bone (ct-basic)"] == pytest.approx(phantom.volume_ml(BONE), rel=0.05)
    for name, info in (("seg.dcm", seg_info[0]), ("sr.dcm", sr_info[0])):
        copy = tmp_path / name
        copy.write_bytes(orthanc.file(info["ID"]))
        report = dciodvfy(copy)
        assert report.errors == [], report.errors
    assert hd.seg.segread(tmp_path / "seg.dcm").number_of_segments == 3
    # the PACS has the results a moment before the node records the job done (after the last delivery)
    job = wait_until(lambda: next(iter(node.jobs("done")), None), 30, "the job recorded done after delivery")
    assert job["results"]["deliveries"]["pacs"]["delivered"] is True
    assert "segnode: forwarding CT series" in orthanc.log()


def test_direct_push_results_are_c_stored_to_orthanc(start_node: Callable[..., NodeProcess],
                                                     orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc").start()
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc)))
    paths, _, _ = phantom_series(tmp_path, slices=20)
    assert storescu(node.dicom_port, paths).returncode == 0
    seg_info, _ = results_in(orthanc)
    assert seg_info[0]["MainDicomTags"]["SOPInstanceUID"] == node.wait_jobs("done", 1)[0]["results"]["files"][0][
        "sop_instance_uid"]




def test_direct_push_results_arrive_in_an_orthanc_over_tls(start_node: Callable[..., NodeProcess],
                                                           orthancs: list[OrthancProcess], pki: TestPKI,
                                                           tmp_path: Path) -> None:
    """Orthanc's DICOM port speaks TLS only and requires a client certificate from our CA: the node presents its
    own and verifies Orthanc's against the same CA."""
    orthanc = OrthancProcess(tmp_path / "orthanc", tls=TlsFiles(pki.pacs.cert, pki.pacs.key, pki.ca.cert)).start()
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc, ca_file=pki.ca.cert, certificate=pki.node.cert,
                                               private_key=pki.node.key, server_name="localhost")))
    paths, _, _ = phantom_series(tmp_path, slices=20)
    assert storescu(node.dicom_port, paths).returncode == 0
    seg_info, sr_info = results_in(orthanc)
    assert (len(seg_info), len(sr_info)) == (1, 1)
    job = node.wait_jobs("done", 1)[0]
    assert {seg_info[0]["MainDicomTags"]["SOPInstanceUID"], sr_info[0]["MainDicomTags"]["SOPInstanceUID"]} \
        == {f["sop_instance_uid"] for f in job["results"]["files"]}
    assert any("over TLS" in e["detail"] for e in node.job(job["id"])["events"])
    assert "TLS error" not in orthanc.log()


def test_a_pacs_certificate_from_another_ca_is_retried_with_the_reason_in_the_events(
        start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess], pki: TestPKI,
        tmp_path: Path) -> None:
    foreign = pki.other_ca.issue("ORTHANC-ELSEWHERE", sans=("DNS:localhost", "IP:127.0.0.1"))
    orthanc = OrthancProcess(tmp_path / "orthanc", tls=TlsFiles(foreign.cert, foreign.key, pki.ca.cert)).start()
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc, ca_file=pki.ca.cert, certificate=pki.node.cert,
                                               private_key=pki.node.key)))
    paths, _, _ = phantom_series(tmp_path, slices=12)
    assert storescu(node.dicom_port, paths).returncode == 0

    def retried():
        jobs = node.jobs("sending")
        return jobs and jobs[0]["results"].get("deliveries", {}).get("pacs", {}).get("attempts", 0) >= 2 and jobs
    job = wait_until(retried, 60, "at least two failed attempts")[0]
    reason = "TLS: certificate verify failed: unable to get local issuer certificate"
    assert reason in job["results"]["deliveries"]["pacs"]["last_error"]
    events = [e["detail"] for e in node.job(job["id"])["events"]]
    assert any(d.startswith("attempt 1 to pacs failed") and reason in d for d in events), events
    log = orthanc.log()
    assert log.count("Receiving Association failed: TLS error") >= 2     # one handshake per attempt,
    assert "wrong version number" not in log                            # never a plain association
    assert orthanc.instances_of_modality("SEG") == []


def test_orthanc_down_then_up_gets_exactly_one_copy(start_node: Callable[..., NodeProcess],
                                                    orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc")          # ports chosen, not started
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc)))
    paths, _, _ = phantom_series(tmp_path, slices=20)
    assert storescu(node.dicom_port, paths).returncode == 0

    def retrying():
        jobs = node.jobs("sending")
        return jobs and jobs[0]["results"].get("deliveries", {}).get("pacs", {}).get("attempts", 0) >= 2 and jobs
    job = wait_until(retrying, 60, "at least two failed attempts")[0]
    assert "cannot reach pacs" in job["results"]["deliveries"]["pacs"]["last_error"]
    events = node.job(job["id"])["events"]
    assert any("attempt 1 to pacs failed" in e["detail"] for e in events)
    orthanc.start()
    node.wait_jobs("done", 1)
    seg_info, sr_info = results_in(orthanc)
    assert (len(seg_info), len(sr_info)) == (1, 1)


@pytest.mark.parametrize("refusal", ["wrong-ae", "bad-credentials"])
def test_a_refusing_pacs_fails_the_job_with_its_words_and_the_result_is_kept(
        start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess], tmp_path: Path,
        refusal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc", users={"segnode": "right"}).start()
    orthancs.append(orthanc)
    if refusal == "wrong-ae":
        dest, expected = dicom_dest(orthanc, ae_title="NOTORTHANC"), "rejected the association"
        env = {}
    else:
        dest = f'name = "pacs"\nkind = "orthanc-rest"\nurl = "{orthanc.url}"\nusername = "segnode"\n' \
               f'password_env = "PACS_PASSWORD"'
        expected, env = "answered 401", {"PACS_PASSWORD": "wrong"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    node = start_node(config=config(dest))
    paths, _, _ = phantom_series(tmp_path, slices=12)
    assert storescu(node.dicom_port, paths).returncode == 0
    job = node.wait_jobs("failed", 1)[0]
    assert expected in job["detail"] and "results kept in the outbox" in job["detail"]
    for f in job["results"]["files"]:
        assert (node.data_dir / "results" / job["id"] / f["file"]).exists()
    assert orthanc.instances_of_modality("SEG") == []


def test_rest_upload_with_good_credentials(start_node: Callable[..., NodeProcess], orthancs: list[OrthancProcess],
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc", users={"segnode": "s3cret"}).start()
    orthancs.append(orthanc)
    monkeypatch.setenv("PACS_PASSWORD", "s3cret")
    node = start_node(config=config(f'name = "pacs"\nkind = "orthanc-rest"\nurl = "{orthanc.url}"\n'
                                    f'username = "segnode"\npassword_env = "PACS_PASSWORD"'))
    paths, _, _ = phantom_series(tmp_path, slices=12)
    assert storescu(node.dicom_port, paths).returncode == 0
    node.wait_jobs("done", 1)
    assert len(orthanc.instances_of_modality("SEG")) == 1
    assert "s3cret" not in node.log()


def test_kill_9_while_sending_delivers_after_restart(start_node: Callable[..., NodeProcess],
                                                     orthancs: list[OrthancProcess], tmp_path: Path) -> None:
    orthanc = OrthancProcess(tmp_path / "orthanc")
    orthancs.append(orthanc)
    node = start_node(config=config(dicom_dest(orthanc)))
    paths, _, _ = phantom_series(tmp_path, slices=12)
    assert storescu(node.dicom_port, paths).returncode == 0
    node.wait_jobs("sending", 1)
    assert node.kill(signal.SIGKILL) == -signal.SIGKILL
    orthanc.start()
    node.start()
    node.wait_jobs("done", 1)
    seg_info, sr_info = results_in(orthanc)
    assert (len(seg_info), len(sr_info)) == (1, 1)
