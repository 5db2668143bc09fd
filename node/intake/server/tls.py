"""The DICOM TLS port's two decisions: the handshake (done on the association's own thread, bounded by
`[tls] handshake_timeout_s`, so a peer that never finishes it holds up nobody else) and whether the
certificate presented may call as the AE title in the A-ASSOCIATE-RQ (`[tls] peers`)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from node.security import TlsSettings, describe


class HandshakeRefused(Exception):
    """The TLS handshake failed; the message says why, in an admin's words."""


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate a TLS peer presented (verified against [tls] ca_file), as `getpeercert()` gives it."""
    fields: dict[str, Any]
    der: bytes

    def __str__(self) -> str:
        return describe(self.fields)


def handshake(sock: socket.socket, context: ssl.SSLContext, timeout_s: float,
              ) -> tuple[ssl.SSLSocket, PeerCertificate | None]:
    """The server side of the TLS handshake on an accepted socket, within `timeout_s`: the TLS socket and the
    peer's certificate (None if it sent none and none was required). Raises HandshakeRefused."""
    sock.settimeout(timeout_s)
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        raise HandshakeRefused(f"connection lost before the handshake ({type(exc).__name__})") from None
    expired = threading.Event()

    def cut_off() -> None:                           # a deadline for the whole handshake, not each read
        expired.set()
        with contextlib.suppress(OSError):
            socket.socket.shutdown(tls, socket.SHUT_RDWR)
    deadline = threading.Timer(timeout_s, cut_off)
    deadline.daemon = True
    deadline.start()
    try:
        _handshake(tls, timeout_s)
    except BaseException as exc:
        tls.close()                                  # it holds the connection's descriptor now
        if expired.is_set() and isinstance(exc, HandshakeRefused):
            raise HandshakeRefused(f"the TLS handshake did not end within {timeout_s:g} s") from None
        raise
    finally:
        deadline.cancel()
    fields = tls.getpeercert()
    der = tls.getpeercert(binary_form=True)
    return tls, (PeerCertificate(dict(fields), der) if fields and der else None)


def _handshake(tls: ssl.SSLSocket, timeout_s: float) -> None:
    try:
        tls.do_handshake()
    except TimeoutError:
        raise HandshakeRefused(f"the TLS handshake did not end within {timeout_s:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise HandshakeRefused(f"client certificate refused: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise HandshakeRefused(_ssl_reason(exc)) from None
    except OSError as exc:
        raise HandshakeRefused(f"connection lost during the handshake ({exc.strerror or type(exc).__name__})") from None


_REASONS = {
    "WRONG_VERSION_NUMBER": "not a TLS handshake (plain DICOM on the TLS port?)",
    "HTTP_REQUEST": "an HTTP request, not a TLS handshake",
    "UNSUPPORTED_PROTOCOL": "the client offered a TLS version below the minimum",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the client offered a TLS version below the minimum",
    "NO_SHARED_CIPHER": "no cipher in common (the node accepts BCP 195 ciphers only)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate ([tls] client_certificate = required)",
    "CERTIFICATE_VERIFY_FAILED": "client certificate refused",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "client certificate revoked",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the node's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused the node's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client says the node's certificate has expired",
}


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = str(getattr(exc, "reason", "") or "")
    return _REASONS.get(reason, f"TLS handshake failed ({reason or type(exc).__name__})")


def certificate_refusal(calling_ae: str, certificate: PeerCertificate | None, tls: TlsSettings) -> str | None:
    """Why a TLS peer may not call as `calling_ae` (None: it may). An AE title listed in `[tls] peers` may be
    used only by a certificate matching one of its entries; with a peers table, an AE title not in it is
    refused too. Without a table, any certificate the CAs vouch for may use any (allowed) AE title."""
    identities = tls.identities
    if not identities:
        return None
    expected = identities.get(calling_ae.strip())
    if expected is None:
        return f"calling AE {calling_ae.strip()!r} is not in [tls] peers (certificate {certificate or 'none'})"
    if certificate is None:
        return f"calling AE {calling_ae.strip()!r} needs a certificate ({', '.join(map(str, expected))}); none sent"
    if not any(who.matches(certificate.fields, certificate.der) for who in expected):
        return (f"certificate {certificate} may not call as {calling_ae.strip()!r} "
                f"(expected {', '.join(map(str, expected))})")
    return None
