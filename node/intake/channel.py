"""The messages between the node's main process and its receiver processes (pure: bytes in, values out).

Each association a receiver process serves has its own channel to the main process, a UNIX SOCK_SEQPACKET
socket pair (one message per send, boundaries kept, EOF when either side closes or dies):

    receiver -> main   b"E"                  may this association be established?  -> b"Y" | b"N"
    receiver -> main   b"R" + record (JSON)  commit this instance's row            -> b"0" new | b"1" duplicate
                                                                                     | b"!" + why it was not
Closing the channel ends the association for the main process (it stops counting it).

Each receiver process has one control socket (also SOCK_SEQPACKET):

    main -> receiver   b"C" with two file descriptors: an accepted DICOM connection and its channel
    main -> receiver   b"S"   the node is stopping: refuse new instances (0xA700)
    main -> receiver   b"A"   abort every association now
    receiver -> main   b"R"   ready to take connections
EOF on it (the main process gone) makes the receiver process abort its associations and exit.
"""

from __future__ import annotations

import dataclasses
import json

from node.jobs.records import InstanceRecord

ESTABLISH, ROW = b"E", b"R"
YES, NO = b"Y", b"N"
NEW, DUPLICATE, FAILED = b"0", b"1", b"!"
CONNECTION, STOPPING, ABORT, READY = b"C", b"S", b"A", b"R"
MAX_MESSAGE = 64 * 1024

_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceRecord))
_TYPES = {f.name: (int if f.name == "size" else str) for f in dataclasses.fields(InstanceRecord)}


class BadMessage(ValueError):
    """A channel message that is not one this module writes."""


def row_message(rec: InstanceRecord) -> bytes:
    return ROW + json.dumps([getattr(rec, name) for name in _FIELDS], ensure_ascii=False,
                            separators=(",", ":")).encode()


def record_of(message: bytes) -> InstanceRecord:
    """The record in a ROW message; BadMessage if it is not exactly the fields of an InstanceRecord."""
    if message[:1] != ROW:
        raise BadMessage("not a row message")
    try:
        values = json.loads(message[1:])
    except ValueError:
        raise BadMessage("row message is not JSON") from None
    if not isinstance(values, list) or len(values) != len(_FIELDS):
        raise BadMessage("row message has the wrong number of fields")
    for name, value in zip(_FIELDS, values, strict=True):
        if type(value) is not _TYPES[name]:
            raise BadMessage(f"row message field {name} is not {_TYPES[name].__name__}")
    return InstanceRecord(*values)


def failure_message(why: str) -> bytes:
    return FAILED + why.encode()[:1000]
