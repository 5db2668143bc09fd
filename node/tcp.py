"""TCP_NODELAY on pynetdicom sockets, for the SCP (intake) and the C-STORE SCU (delivery) alike."""

from __future__ import annotations

import socket

from pynetdicom.events import Event


def set_nodelay(sock: socket.socket | None) -> None:
    """pynetdicom never sets TCP_NODELAY; without it each DIMSE round trip waits ~40 ms for a delayed ACK."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def on_conn_open(event: Event) -> None:
    """EVT_CONN_OPEN handler that sets TCP_NODELAY on the association's socket."""
    dul_socket = getattr(event.assoc.dul, "socket", None)
    set_nodelay(getattr(dul_socket, "socket", None))
