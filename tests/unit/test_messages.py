"""Incoming DIMSE messages (node/intake/wire/messages.py): a plain C-STORE-RQ read directly gives what
pynetdicom's decoder gives, for messages encoded by pynetdicom's own encoder; anything else is pynetdicom's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from node.intake.wire import messages
from node.intake.wire.messages import Incoming, ProtocolError, StoreRQ, feed

REPO = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"
DATASET = bytes(range(256)) * 300                   # 76.8 KB: several fragments at most PDU sizes


def store_rq(message_id: int = 7, instance: str | None = "1.2.826.0.1.3680043.8.498.1", **extra: object) -> C_STORE:
    rq = C_STORE()
    rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = message_id, CT, 0
    if instance is not None:
        rq.AffectedSOPInstanceUID = instance
    for name, value in extra.items():
        setattr(rq, name, value)
    rq.DataSet = BytesIO(DATASET)
    return rq


def bodies(primitive: C_STORE | C_ECHO, context_id: int, max_pdu: int) -> list[bytes]:
    """The P-DATA-TF bodies a pynetdicom SCU would send for `primitive`."""
    message = C_STORE_RQ() if isinstance(primitive, C_STORE) else C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return [P_DATA_TF(p).encode()[6:] for p in message.encode_msg(context_id, max_pdu)]


def received(all_bodies: list[bytes], accepted: tuple[int, ...] = (1, 3)) -> list[tuple[int, object]]:
    incoming, out = Incoming(), []
    for body in all_bodies:
        out.extend(feed(accepted, incoming, body))
    assert not incoming.started, "a message was left part-way in"
    return out


def pynetdicom_decoded(all_bodies: list[bytes]) -> StoreRQ:
    message = DIMSEMessage()
    for body in all_bodies:
        for context_id, pdv in messages.pdvs(body):
            p = P_DATA()
            p.presentation_data_value_list = [[context_id, bytes(pdv)]]
            if message.decode_msg(p):
                return StoreRQ.from_primitive(message.message_to_primitive())
    raise AssertionError("pynetdicom did not complete the message")


@pytest.mark.parametrize("max_pdu", [0, 4096, 16384, 65536, 1 << 20])
@pytest.mark.parametrize("extra", [{}, {"Priority": 2}, {"MoveOriginatorApplicationEntityTitle": "MOVER",
                                                          "MoveOriginatorMessageID": 3}])
def test_a_plain_c_store_is_read_as_pynetdicom_reads_it(max_pdu: int, extra: dict[str, object]) -> None:
    sent = bodies(store_rq(**extra), 3, max_pdu)
    [(context_id, message)] = received(sent)
    assert context_id == 3 and isinstance(message, StoreRQ)
    assert message == pynetdicom_decoded(sent)
    assert message.dataset == DATASET and message.message_id == 7


@contextmanager
def sending_any_uid() -> Iterator[None]:
    """The hostile sender's side: pynetdicom's encoder in this test process is told not to judge UIDs while the
    message is built (a process-wide setting of pynetdicom's, put back after)."""
    saved = pynetdicom_config.VALIDATORS["UI"]
    pynetdicom_config.VALIDATORS["UI"] = lambda _value: (True, "")
    try:
        yield
    finally:
        pynetdicom_config.VALIDATORS["UI"] = saved


@pytest.mark.parametrize("instance", ["1.2." + "3" * 89, "1.2.3a", "1.2.3 4"])
def test_an_unfit_instance_uid_is_passed_on_as_sent_for_the_door_to_refuse(instance: str) -> None:
    with sending_any_uid():
        sent = bodies(store_rq(instance=instance), 1, 16384)
    [(_cx, message)] = received(sent)
    assert isinstance(message, StoreRQ) and message.sop_instance_uid == instance


def test_a_c_store_without_an_instance_uid_is_left_to_pynetdicom() -> None:
    sent = bodies(store_rq(instance=None), 1, 16384)
    [(_cx, message)] = received(sent)
    assert isinstance(message, C_STORE)                  # pynetdicom's primitive, as before
    assert StoreRQ.from_primitive(message) == pynetdicom_decoded(sent)
    assert StoreRQ.from_primitive(message).sop_instance_uid is None


_FRESH_INTERPRETER = """
import sys
from io import BytesIO
from pynetdicom import _config
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
default = _config.VALIDATORS["UI"]
_config.VALIDATORS["UI"] = lambda _value: (True, "")     # the sender's side
rq = C_STORE()
rq.MessageID, rq.AffectedSOPClassUID, rq.Priority = 1, "1.2.840.10008.5.1.4.1.1.2", 0
rq.AffectedSOPInstanceUID, rq.DataSet = "1.2." + "3" * 89, BytesIO(b"\\x00" * 8)
message = C_STORE_RQ()
message.primitive_to_message(rq)
pdvs = [pdv for p in message.encode_msg(1, 16384) for pdv in p.presentation_data_value_list]
_config.VALIDATORS["UI"] = default

def decoded():
    decoder = DIMSEMessage()
    for pdv in pdvs:
        p = P_DATA()
        p.presentation_data_value_list = [list(pdv)]
        if decoder.decode_msg(p):
            return decoder.message_to_primitive().AffectedSOPInstanceUID
import node.app                                          # importing the node decides nothing
assert _config.VALIDATORS["UI"] is default, "an import changed pynetdicom's UID validator"
try:
    decoded()
except ValueError:
    pass
else:
    sys.exit("pynetdicom's decoder took a 93-character UID before the node said so")
from node.intake.wire.messages import let_the_door_judge_uids
let_the_door_judge_uids()
assert decoded() == "1.2." + "3" * 89
"""


def test_only_the_named_call_lets_pynetdicom_s_decoder_pass_any_uid_and_no_import_does() -> None:
    """In a fresh interpreter (this test process has built association servers already): importing the node
    leaves pynetdicom's validator alone; `let_the_door_judge_uids()` is what lets a command it decodes carry an
    over-long UID to the door instead of an abort."""
    result = subprocess.run([sys.executable, "-c", _FRESH_INTERPRETER], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_echo_between_stores_is_pynetdicom_s_and_the_next_store_is_read_again() -> None:
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 2, "1.2.840.10008.1.1"
    sent = bodies(store_rq(1), 1, 16384) + bodies(echo, 1, 16384) + bodies(store_rq(3), 3, 16384)
    kinds = [(cx, type(m).__name__, getattr(m, "message_id", None)) for cx, m in received(sent)]
    assert kinds == [(1, "StoreRQ", 1), (1, "C_ECHO", None), (3, "StoreRQ", 3)]


def test_several_messages_in_one_pdu_are_each_answered() -> None:
    one = b"".join(bodies(store_rq(1), 1, 0) + bodies(store_rq(2), 1, 0))
    assert [m.message_id for _cx, m in received([one])] == [1, 2]      # type: ignore[attr-defined]


def test_data_before_the_command_is_complete_is_handled_as_pynetdicom_does() -> None:
    sent = bodies(store_rq(), 1, 4096)
    command = next(messages.pdvs(sent[0]))[1]
    first_half = bytes((0x01,)) + bytes(command[1:40])            # command, not last
    second_half = bytes((0x03,)) + bytes(command[40:])            # command, last
    early_data = bytes((0x00,)) + DATASET[:100]                   # data set fragment, not last
    rest = bytes((0x02,)) + DATASET[100:]

    def body(pdv: bytes) -> bytes:
        return (len(pdv) + 1).to_bytes(4, "big") + b"\x01" + pdv
    [(_cx, message)] = received([body(first_half), body(early_data), body(second_half), body(rest)])
    assert isinstance(message, C_STORE) and StoreRQ.from_primitive(message).dataset == DATASET


def test_a_command_fragment_inside_a_data_set_aborts() -> None:
    sent = bodies(store_rq(), 1, 4096)
    incoming = Incoming()
    list(feed((1,), incoming, sent[0]))
    list(feed((1,), incoming, sent[1]))                    # a data fragment, not the last
    with pytest.raises(ProtocolError):
        list(feed((1,), incoming, sent[0]))


def test_a_context_that_was_not_accepted_aborts() -> None:
    with pytest.raises(ProtocolError, match="context 5"):
        received(bodies(store_rq(), 5, 16384))


def test_an_undecodable_command_aborts() -> None:
    garbage = b"\x03" + b"\x00\x00\x00\x00\x04\x00\x00\x00\xff\xff"    # group length says 0xFFFF..., then nothing
    with pytest.raises(ProtocolError, match="undecodable DIMSE command"):
        received([(len(garbage) + 1).to_bytes(4, "big") + b"\x01" + garbage])


def test_a_data_set_on_another_context_than_its_command_aborts() -> None:
    command, data = bodies(store_rq(), 1, 0)[0], bodies(store_rq(), 3, 0)[1]
    incoming = Incoming()
    list(feed((1, 3), incoming, command))
    with pytest.raises(ProtocolError, match="context 3"):
        list(feed((1, 3), incoming, data))
