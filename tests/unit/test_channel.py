"""What crosses from the main process to its receiver processes: a row goes over and comes back equal (anything
else is refused by name rather than recorded); the settings a receiver process starts with are the node's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from node.intake import channel
from node.intake.receiver_process import config_of, settings_of
from node.intake.spool import Spool
from node.jobs.records import InstanceRecord
from node.settings import DicomSettings

RECORD = InstanceRecord(sop_instance_uid="1.2.3.4.5", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                        path="/spool/1.2.3/1.2.3.4/1.2.3.4.5.dcm", size=131_418, calling_ae="SCANNER",
                        modality="CT", body_part_examined="ABDOMEN", series_description="Bauch \u00e9\"\\",
                        patient_name="M\u00fcller^J\u00fcrgen", patient_id="PID-1")


def test_a_row_comes_back_equal_phi_and_non_ascii_text_included() -> None:
    message = channel.row_message(RECORD)
    assert message[:1] == channel.ROW and len(message) < channel.MAX_MESSAGE
    assert channel.record_of(message) == RECORD
    assert channel.record_of(message).patient_name == RECORD.patient_name


@pytest.mark.parametrize(("message", "why"), [
    (b"X[]", "not a row"),
    (b"R{not json", "not JSON"),
    (b"R[\"1.2\"]", "wrong number"),
    (channel.row_message(dataclasses.replace(RECORD, size=0)).replace(b",0,", b",\"0\","), "size is not int"),
    (channel.row_message(dataclasses.replace(RECORD, size=0)).replace(b",0,", b",true,"), "size is not int"),
    (channel.row_message(RECORD).replace(b"\"CT\"", b"null"), "modality is not str"),
])
def test_anything_but_a_row_of_the_right_fields_and_types_is_refused(message: bytes, why: str) -> None:
    with pytest.raises(channel.BadMessage, match=why):
        channel.record_of(message)


def test_a_failure_message_carries_its_reason_bounded() -> None:
    message = channel.failure_message("job store unavailable" + "x" * 5000)
    assert message.startswith(channel.FAILED + b"job store unavailable") and len(message) == 1001


def test_a_receiver_process_gets_the_node_s_dicom_settings_and_spool_unchanged(tmp_path: Path) -> None:
    settings = DicomSettings(ae_title="NODE_A", allowed_calling_aes=("PACS", "CT1"), max_associations=7,
                             max_pdu_bytes=16384, receiver_processes=3, dimse_timeout_s=12.5)
    spool = Spool(tmp_path / "spool", 12345, shared=True)
    config = json.loads(config_of(settings, spool, "WARNING"))
    assert settings_of(config["dicom"]) == settings
    assert (config["spool"], config["min_free_bytes"], config["log_level"]) == (str(spool.root), 12345, "WARNING")
