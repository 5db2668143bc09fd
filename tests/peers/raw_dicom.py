"""A DICOM upper-layer peer on a bare socket: the exact PDUs a test wants on the wire, and every byte the node
answers read back, with no association library between (whose own races could blur what the node did)."""

from __future__ import annotations

import socket

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage


def associate_rq(called: str = "SEGNODE", calling: str = "RAW") -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing CT Image Storage."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, called
    context = build_context(CTImageStorage)
    context.context_id = 1
    rq.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    rq.user_information = [length]
    return A_ASSOCIATE_RQ(rq).encode()


def raw(port: int) -> socket.socket:
    """A TCP connection to the node, TCP_NODELAY on."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the node sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def established(port: int) -> socket.socket:
    """A connection with an accepted association on it."""
    sock = raw(port)
    sock.sendall(associate_rq())
    assert sock.recv(1)[0] == 0x02, "A-ASSOCIATE-AC expected"
    sock.recv(65536)
    return sock
