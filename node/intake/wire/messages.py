"""DIMSE messages arriving on an association: the P-DATA fragments of each message put together.

A C-STORE-RQ whose command set holds only the usual elements is read directly (its command set is a
dozen implicit-VR elements) and its data set kept as the received bytes: pynetdicom's decoder builds a
pydicom Dataset and a validated primitive for it, ~0.1 ms an instance. Every other message, or a command
set with anything unusual in it, goes to pynetdicom's DIMSEMessage, which decides as it always has.

UIDs in a command set are not judged here: a C-STORE-RQ's UIDs are passed on as text whatever they hold,
and the door refuses an unfit one with a named 0xC000 (node.intake.uids.check_uid). For the commands
pynetdicom decodes, `let_the_door_judge_uids()` is the one place that tells it the same.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from io import BytesIO

from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_C_STORE_RQ = 0x0001
_NO_DATASET = 0x0101
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UID_TEXT = re.compile(rb"[\x20-\x7e]{1,1024}")       # printable ASCII: shown in a refusal as it was sent
# (0000,eeee) elements a C-STORE-RQ may carry: group length, class, field, ID, priority, data set type,
# instance, and the move originator's AE title and message ID
_KNOWN = frozenset((0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031))


def _any_uid(_value: object) -> tuple[bool, str]:
    return True, ""


def let_the_door_judge_uids() -> None:
    """Make pynetdicom's DIMSE decoder (a process-wide setting of pynetdicom's) pass every UID in a command
    through, as this module's own reader does: on a UID it finds invalid (e.g. longer than 64 characters) it
    would raise, and the association would be aborted with no answer, which a sender retries forever. The
    door refuses such an instance with a named 0xC000 instead. Called by the association server when it is
    built; pynetdicom's SCU (deliveries) sends UIDs this node made, which are valid either way."""
    pynetdicom_config.VALIDATORS["UI"] = _any_uid


class ProtocolError(Exception):
    """The peer broke PS3.7/PS3.8 (malformed message or fragment order): the association is aborted."""


def pdvs(body: bytes | bytearray) -> Iterator[tuple[int, memoryview]]:
    """The presentation data values of a P-DATA-TF body: (context ID, control header + fragment), the
    latter a view into `body` (no copy)."""
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if offset + 6 > end:
            raise ProtocolError("P-DATA-TF item header cut short")
        length = int.from_bytes(body[offset:offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"P-DATA-TF item length {length} does not fit the PDU")
        yield body[offset + 4], view[offset + 5:offset + 4 + length]
        offset += 4 + length


def feed(accepted: Container[int], incoming: Incoming, body: bytes | bytearray,
         ) -> Iterator[tuple[int, StoreRQ | object]]:
    """Add a P-DATA-TF body to the message being received; yield (context ID, message) for each message
    it completes, and start the next one in `incoming`."""
    for context_id, pdv in pdvs(body):
        if context_id not in accepted:
            raise ProtocolError(f"P-DATA on presentation context {context_id}, which was not accepted")
        message = incoming.add(context_id, pdv)
        if message is not None:
            done = incoming.context_id
            incoming.reset()
            yield (context_id if done is None else done), message


@dataclass(frozen=True, slots=True)
class StoreRQ:
    """A C-STORE request: what the node reads of its command set, and its data set as sent."""
    message_id: int
    sop_class_uid: str | None
    sop_instance_uid: str | None
    dataset: bytes

    @classmethod
    def from_primitive(cls, primitive: C_STORE) -> StoreRQ:
        """One that pynetdicom decoded (the UIDs as its primitive holds them; None where absent)."""
        data = primitive.DataSet.getvalue() if isinstance(primitive.DataSet, BytesIO) else b""
        sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
        return cls(int(primitive.MessageID), None if sop_class is None else str(sop_class),
                   None if sop_instance is None else str(sop_instance), data)


@dataclass(frozen=True, slots=True)
class _StoreCommand:
    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(slots=True)
class Incoming:
    """The message being received on one association."""
    command: bytearray = field(default_factory=bytearray)
    store: _StoreCommand | None = None            # a C-STORE-RQ read directly: its data set follows
    data: list[memoryview | bytes] = field(default_factory=list)
    slow: DIMSEMessage | None = None              # anything else: pynetdicom decodes it

    def reset(self) -> None:
        self.command, self.store, self.data, self.slow = bytearray(), None, [], None

    @property
    def started(self) -> bool:
        """A message is part-way in (the DIMSE timeout applies, not the idle one)."""
        return bool(self.command) or self.store is not None or self.slow is not None

    def add(self, context_id: int, pdv: memoryview | bytes) -> StoreRQ | object | None:
        """Add one presentation data value (control header + fragment): the message it completes
        (a StoreRQ, or pynetdicom's primitive for anything else), or None while it is incomplete."""
        if self.slow is not None:
            return self._slowly(context_id, pdv)
        control, fragment = pdv[0], pdv[1:]
        if control & 1:                             # a command fragment
            if self.store is not None:
                raise ProtocolError("a command fragment inside a C-STORE data set")
            self.command += fragment
            if not control & 2:
                return None
            command = store_command(bytes(self.command), context_id)
            if command is None:                     # not a plain C-STORE-RQ: pynetdicom takes it from here
                return self._replay(context_id)
            self.store = command
            return None
        if self.store is None:                      # data before the command set is complete: pynetdicom's way
            self._replay(context_id, last=False)
            return self._slowly(context_id, pdv)
        if context_id != self.store.context_id:
            raise ProtocolError(f"a data set fragment on context {context_id} for a command on context "
                                f"{self.store.context_id}")
        self.data.append(fragment)
        if not control & 2:
            return None
        store = self.store
        return StoreRQ(store.message_id, store.sop_class_uid, store.sop_instance_uid, b"".join(self.data))

    def _replay(self, context_id: int, *, last: bool = True) -> object | None:
        """Hand what arrived so far to pynetdicom's decoder, as one command fragment."""
        self.slow = DIMSEMessage()
        if not self.command:
            return None
        return self._slowly(context_id, bytes((0x03 if last else 0x01,)) + bytes(self.command))

    def _slowly(self, context_id: int, pdv: memoryview | bytes) -> object | None:
        assert self.slow is not None
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[context_id, bytes(pdv)]]
        try:
            complete = self.slow.decode_msg(primitive)
            return self.slow.message_to_primitive() if complete else None
        except Exception as exc:
            raise ProtocolError(f"undecodable DIMSE command ({type(exc).__name__})") from None

    @property
    def context_id(self) -> int | None:
        """The presentation context of the message's command set, once it is complete."""
        if self.store is not None:
            return self.store.context_id
        return None if self.slow is None else self.slow.context_id


def store_command(command: bytes, context_id: int) -> _StoreCommand | None:
    """The command set of a plain C-STORE-RQ with a data set, read directly; None for anything else."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += 8
        if group != 0 or element not in _KNOWN or element in values or pos + length > end:
            return None
        values[element] = command[pos:pos + length]
        pos += length
    try:
        if _us(values[0x0100]) != _C_STORE_RQ or _us(values[0x0800]) == _NO_DATASET:
            return None
        message_id = _us(values[0x0110])
        sop_class, sop_instance = values[0x0002].rstrip(b"\x00 "), values[0x1000].rstrip(b"\x00 ")
    except (KeyError, ValueError):
        return None
    if not (_UID_TEXT.fullmatch(sop_class) and _UID_TEXT.fullmatch(sop_instance)):
        return None                                 # empty, binary or huge: pynetdicom's primitive says what
    return _StoreCommand(context_id, message_id, sop_class.decode(), sop_instance.decode())


def _us(value: bytes) -> int:
    if len(value) != 2:
        raise ValueError("not a US")
    return int(_US.unpack(value)[0])
