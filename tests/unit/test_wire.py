"""The hot-path encoders write exactly what pynetdicom's encoders write, and step aside when they cannot."""

from __future__ import annotations

import random
from io import BytesIO

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import P_DATA_TF

from node.intake.wire import encoders
from node.intake.wire import upper_layer as ul
from node.intake.wire.dimse import StoreStatus, store_response
from node.intake.wire.messages import StoreRQ

CT = "1.2.840.10008.5.1.4.1.1.2"


def _uids(seed: int, n: int = 40) -> list[str]:
    """UIDs of every length from 1 to 64, odd and even."""
    rng = random.Random(seed)
    def uid(k: int) -> str:
        return "1" if k <= 2 else "1." + rng.choice("123456789") + "".join(rng.choice("0123456789")
                                                                          for _ in range(k - 3))
    return [uid(k) for k in rng.sample(range(1, 65), n)]


def _pynetdicom_rsp(message_id: int, sop_class: str, sop_instance: str, status: int, comment: str | None,
                    context_id: int, peer_max_pdu: int) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, peer_max_pdu))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_file_meta_is_byte_equal_to_pynetdicoms(syntax: str) -> None:
    for sop_instance in _uids(1):
        expected = encode_file_meta(create_file_meta(sop_class_uid=CT, sop_instance_uid=sop_instance,
                                                     transfer_syntax=syntax))
        assert encoders.file_meta(CT, sop_instance, syntax) == expected


@pytest.mark.parametrize("comment", [None, "", "odd", "even", "Pixel Data holds 4096 bytes; the header declares 8192"])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xA900, 0xC000])
def test_store_rsp_is_byte_equal_to_pynetdicoms(status: int, comment: str | None) -> None:
    for i, sop_instance in enumerate(_uids(2, 12)):
        for max_pdu in (0, 4096, 16384):
            args = (1 + i * 5003 % 65535, CT, sop_instance, status, comment, 1 + 2 * (i % 100), max_pdu)
            assert encoders.store_rsp(*args) == _pynetdicom_rsp(*args)


def test_unusual_values_fall_back_to_pynetdicom() -> None:
    assert encoders.file_meta(CT, "1." + "2" * 2000, ExplicitVRLittleEndian) is None       # longer than any valid UID
    assert encoders.file_meta(CT, "1.2.\u00e9", ExplicitVRLittleEndian) is None            # not ASCII
    assert encoders.store_rsp(1, CT, "1.2", 0, "x" * 300, 1, 128) is None                  # needs two fragments
    assert encoders.store_rsp(70000, CT, "1.2", 0, None, 1, 0) is None                     # not a US
    assert encoders.file_meta(CT, None, ExplicitVRLittleEndian) is None                    # no UID in the request:
    assert encoders.store_rsp(1, CT, None, 0xC000, "no UID", 1, 0) is None                 # pynetdicom omits it


def test_a_request_without_an_instance_uid_is_answered_as_pynetdicom_would() -> None:
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID, request.Priority = 4, CT, 0
    request.DataSet = BytesIO(b"")
    assert request.AffectedSOPInstanceUID is None
    status = store_response(StoreStatus.CANNOT_UNDERSTAND, "cannot read study/series/SOP UIDs")
    assert ul.store_reply(StoreRQ.from_primitive(request), status, 1, 16384) == _pynetdicom_rsp(
        4, CT, None, 0xC000, "cannot read study/series/SOP UIDs", 1, 16384)


def test_the_upper_layer_answers_the_same_either_way() -> None:
    """A 93-character instance UID (refused by the door later) still gets a well-formed file and reply."""
    long_uid = "1.2." + "3" * 89
    request = StoreRQ(9, CT, long_uid, b"\x08\x00\x16\x00")
    data = ul.stored_file(request, ExplicitVRLittleEndian)
    status = store_response(StoreStatus.CANNOT_UNDERSTAND, "SOPInstanceUID is longer than 64 characters")
    reply = ul.store_reply(request, status, 3, 16384)
    saved = pynetdicom_config.VALIDATORS["UI"]            # the oracle: pynetdicom told not to judge the UID
    pynetdicom_config.VALIDATORS["UI"] = lambda _value: (True, "")
    try:
        meta = encode_file_meta(create_file_meta(sop_class_uid=CT, sop_instance_uid=long_uid,
                                                 transfer_syntax=ExplicitVRLittleEndian))
        expected = _pynetdicom_rsp(9, CT, long_uid, 0xC000, "SOPInstanceUID is longer than 64 characters", 3, 16384)
    finally:
        pynetdicom_config.VALIDATORS["UI"] = saved
    assert data == b"\x00" * 128 + b"DICM" + meta + b"\x08\x00\x16\x00"
    assert reply == expected
