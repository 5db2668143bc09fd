"""Encoders for the two messages on the hot path of every C-STORE: the file meta of the spooled file and
the C-STORE-RSP. Building them through pydicom datasets costs ~0.4 ms an instance; these write the same
bytes directly (tests/unit/test_wire.py proves them byte-equal to pynetdicom's encoders). Anything
unusual (an over-long value, a PDU too small for the response) returns None and the caller falls back
to pynetdicom's encoders."""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_MAX_VALUE = 1024                    # far above any valid UI (64) or LO (64); longer goes the slow way
_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
_COMMAND_LAST = 0x03                 # message control header: command, last fragment


def _even(value: object, pad: bytes) -> bytes | None:
    """The value's bytes padded to even length; None (use pynetdicom's encoder) for anything but non-empty
    ASCII text of a sane length, e.g. a UID missing from the request (None), which pynetdicom omits."""
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(raw) > _MAX_VALUE:
        return None
    return raw + pad if len(raw) % 2 else raw


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_meta(sop_class_uid: object, sop_instance_uid: object, transfer_syntax: object) -> bytes | None:
    """Group 0002 in explicit VR little endian, as pynetdicom's create_file_meta + encode_file_meta write it."""
    values = [_even(v, b"\x00") for v in (sop_class_uid, sop_instance_uid, transfer_syntax,
                                          str(PYNETDICOM_IMPLEMENTATION_UID))]
    version = _even(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
    if version is None or any(v is None for v in values):
        return None
    sop_class, sop_instance, syntax, impl = values
    body = b"".join((
        _explicit(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, 0x0002, b"UI", sop_class),           # type: ignore[arg-type]
        _explicit(0x0002, 0x0003, b"UI", sop_instance),        # type: ignore[arg-type]
        _explicit(0x0002, 0x0010, b"UI", syntax),              # type: ignore[arg-type]
        _explicit(0x0002, 0x0012, b"UI", impl),                # type: ignore[arg-type]
        _explicit(0x0002, 0x0013, b"SH", version),
    ))
    return _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def _implicit(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_rsp(message_id: int, sop_class_uid: object, sop_instance_uid: object, status: int, error_comment: str | None,
              context_id: int, peer_max_pdu: int) -> bytes | None:
    """The P-DATA-TF PDU of a C-STORE-RSP (command set in implicit VR little endian, one PDV), as
    pynetdicom's C_STORE_RSP + P_DATA_TF encode it."""
    sop_class, sop_instance = _even(sop_class_uid, b"\x00"), _even(sop_instance_uid, b"\x00")
    comment = None if error_comment is None else _even(error_comment, b" ") if error_comment else b""
    if sop_class is None or sop_instance is None or (error_comment is not None and comment is None):
        return None
    if not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        return None
    parts = [
        _implicit(0x0002, sop_class),
        _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _implicit(0x0120, struct.pack("<H", message_id)),
        _implicit(0x0800, struct.pack("<H", _NO_DATASET)),
        _implicit(0x0900, struct.pack("<H", status)),
    ]
    if comment is not None:
        parts.append(_implicit(0x0902, comment))
    parts.append(_implicit(0x1000, sop_instance))
    body = b"".join(parts)
    command = _implicit(0x0000, struct.pack("<I", len(body))) + body
    if peer_max_pdu and len(command) + 6 > peer_max_pdu:
        return None                      # would need several fragments: pynetdicom's encoder splits it
    pdv = struct.pack(">IBB", len(command) + 2, context_id, _COMMAND_LAST) + command
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv
