"""Delivery of result files: C-STORE SCU (pynetdicom) or Orthanc REST. Each raises SendError(retryable)."""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as orthanc_errors
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from node.delivery.destinations import Destination
from node.errors import ConfigError, SendError
from node.tcp import on_conn_open

logger = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, paths: Sequence[Path]) -> str:
        """Deliver every file or raise SendError; return a short confirmation."""
        ...


class _RejectNotes(logging.Handler):
    """pynetdicom logs an A-ASSOCIATE-RJ's result and reason but does not keep them: note them on the
    association thread that logged them, so the sender can report the peer's words."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Result:", "Reason:")):
            thread = threading.current_thread()
            notes = getattr(thread, "segnode_reject_notes", [])
            notes.append(message)
            thread.segnode_reject_notes = notes            # type: ignore[attr-defined]


_notes_lock = threading.Lock()
_notes_installed = False


def _install_reject_notes() -> None:
    global _notes_installed
    with _notes_lock:
        if not _notes_installed:
            logging.getLogger("pynetdicom.acse").addHandler(_RejectNotes(level=logging.ERROR))
            _notes_installed = True


class _NotingSSLSocket(ssl.SSLSocket):
    """pynetdicom catches a failed TLS handshake, logs it and returns an aborted association, and an alert the
    PACS sends after the handshake (TLS 1.3: our certificate refused) ends it the same way. This socket class
    (the `SSLContext.sslsocket_class` hook) keeps the first such error on its context for the sender."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:          # an SSLError, or the PACS closing or not answering mid-handshake
            _note_tls_error(self.context, exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            _note_tls_error(self.context, exc)
            raise


def _note_tls_error(context: ssl.SSLContext, exc: OSError) -> None:
    if getattr(context, "segnode_tls_error", None) is None:
        context.segnode_tls_error = exc                     # type: ignore[attr-defined]


def tls_reason(exc: OSError) -> str:
    """OpenSSL's words without their decoration: "certificate verify failed: unable to get local issuer
    certificate", "tlsv13 alert certificate required", "Connection reset by peer"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}".rstrip(".")
    if isinstance(exc, ssl.SSLError):
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return exc.strerror or type(exc).__name__


# Statuses (PS3.4 B.2.3): warnings still mean the object is stored.
_RETRYABLE_PREFIXES = (0xA7,)             # out of resources


class DicomSender:
    """C-STORE SCU to one DICOM destination, one association per delivery; refusals become SendError."""

    def __init__(self, dest: Destination, calling_ae: str, timeout_s: float) -> None:
        self.dest = dest
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        if dest.tls:
            dest.tls_context()          # at start: ConfigError now if a file does not load or a password is unset
        _install_reject_notes()

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop in (SegmentationStorage, Comprehensive3DSRStorage):
            ae.add_requested_context(sop)
        return ae

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.dest.tls:
            return None
        try:
            context = self.dest.tls_context()
        except ConfigError as exc:          # a file gone or replaced by a bad one since the node started
            raise SendError(f"{self.dest.name}: {exc}", retryable=True) from None
        context.sslsocket_class = _NotingSSLSocket
        return context

    def _tls_failure(self, context: ssl.SSLContext | None) -> str:
        """"TLS: <OpenSSL's reason>; <what to check>" for the TLS error this association met, or ""."""
        exc = getattr(context, "segnode_tls_error", None)
        if exc is None:
            return ""
        d = self.dest
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = (f"the PACS's certificate must be issued by a CA in ca_file {d.ca_file} and carry the name "
                    f"{d.tls_server_name} (server_name)")
        elif isinstance(exc, ssl.SSLError) and "alert" in str(exc):
            hint = ("the PACS ended the handshake: it must trust the certificate Segnode presents"
                    + (f" ({d.certificate})" if d.certificate else "; none is configured (certificate)"))
        else:
            hint = f"is port {d.port} a DICOM TLS port?"
        return f"TLS: {tls_reason(exc)}; {hint}"

    def send(self, paths: Sequence[Path]) -> str:
        d = self.dest
        context = self._tls_context()
        assoc = self._ae().associate(d.host, d.port, ae_title=d.ae_title,
                                     evt_handlers=[(evt.EVT_CONN_OPEN, on_conn_open)],
                                     tls_args=(context, d.tls_server_name) if context is not None else None)
        if not assoc.is_established and (failure := self._tls_failure(context)):
            raise SendError(f"{d.name} at {d.host}:{d.port}: {failure}; nothing was sent", retryable=True)
        if assoc.is_rejected:
            notes = "; ".join(getattr(assoc, "segnode_reject_notes", [])) or "no reason given"
            transient = "Transient" in notes
            raise SendError(f"{d.name} rejected the association ({notes}); it must accept calling AE "
                            f"{self.calling_ae} and answer to AE {d.ae_title}", retryable=transient)
        if not assoc.is_established:
            raise SendError(f"cannot reach {d.name} at {d.host}:{d.port} (connection refused, timed out or "
                            "aborted)", retryable=True)
        try:
            for path in paths:
                ds = dcmread(path)
                rsp = assoc.send_c_store(ds)
                status = getattr(rsp, "Status", None)
                if status is None:
                    lost = self._tls_failure(context)
                    raise SendError(f"{d.name} gave no answer to C-STORE of {path.name} (association lost"
                                    + (f"; {lost}" if lost else "") + ")", retryable=True)
                if status == 0x0000 or (status >> 12) == 0xB:
                    continue
                comment = str(getattr(rsp, "ErrorComment", "") or "").strip()
                words = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
                raise SendError(f"{d.name} refused {path.name} ({words})",
                                retryable=(status >> 8) in _RETRYABLE_PREFIXES)
        finally:
            if assoc.is_established:
                assoc.release()
        over = " over TLS" if context is not None else ""
        return f"{len(paths)} object(s) stored by {d.name} ({d.ae_title}@{d.host}:{d.port}{over})"


class OrthancRestSender:
    """Upload through orthanc-api-client; its exceptions are translated into SendError with Orthanc's words."""

    def __init__(self, dest: Destination, timeout_s: float) -> None:
        self.dest = dest
        self.timeout_s = timeout_s

    def send(self, paths: Sequence[Path]) -> str:
        d = self.dest
        client = OrthancApiClient(d.url, user=d.username or None, pwd=d.password() or None)
        for path in paths:
            try:
                # POST /instances as client.upload() does, but with our timeout: a PACS that accepts the
                # connection and never answers must not hold the job in `sending` for ever
                client.post("instances", data=path.read_bytes(), timeout=self.timeout_s)
            except (orthanc_errors.NotAuthorized, orthanc_errors.Forbidden) as exc:
                raise SendError(f"{d.name} answered {exc.http_status_code} ({exc.msg.split('.')[0]}): check "
                                f"username and ${d.password_env or '<password_env>'}", retryable=False) from None
            except (orthanc_errors.ConnectionError, orthanc_errors.TimeoutError) as exc:
                raise SendError(f"cannot reach {d.name} at {d.url} ({exc.msg})", retryable=True) from None
            except orthanc_errors.HttpError as exc:
                body = exc.request_response.text[:200] if exc.request_response is not None else ""
                code = exc.http_status_code or 0
                raise SendError(f"{d.name} refused {path.name}: HTTP {code} {body}".strip(),
                                retryable=code >= 500 or code == 429) from None
            except orthanc_errors.OrthancApiException as exc:
                raise SendError(f"{d.name}: {exc.msg}", retryable=True) from None
        return f"{len(paths)} object(s) uploaded to {d.name} ({d.url})"


def make_sender(dest: Destination, calling_ae: str, timeout_s: float) -> Sender:
    if dest.kind == "dicom":
        return DicomSender(dest, calling_ae, timeout_s)
    return OrthancRestSender(dest, timeout_s)
