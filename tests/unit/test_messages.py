"""Incoming DIMSE messages (node/intake/messages.py): a plain C-STORE-RQ read directly gives what
pynetdicom's decoder gives, for messages encoded by pynetdicom's own encoder; anything else is pynetdicom's."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from node.intake import messages
from node.intake.messages import Incoming, ProtocolError, StoreRQ, feed

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


@pytest.mark.parametrize("instance", [None, "1.2." + "3" * 89, "1.2.3a"])
def test_an_unusual_instance_uid_is_left_to_pynetdicom(instance: str | None) -> None:
    sent = bodies(store_rq(instance=instance), 1, 16384)
    [(_cx, message)] = received(sent)
    assert isinstance(message, C_STORE)                  # pynetdicom's primitive, as before
    assert StoreRQ.from_primitive(message) == pynetdicom_decoded(sent)
    assert StoreRQ.from_primitive(message).sop_instance_uid == instance


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
