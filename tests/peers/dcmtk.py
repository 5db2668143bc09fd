"""DCMTK as the sending scanner."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.peers.helpers import peer_env, scaled, tool

TS_FLAGS = {"explicit": "-xe", "implicit": "-xi", "deflated": "-xd", "rle": "-xr", "jpeg-ls": "-xt",
            "jpeg2000": "-xv"}


def storescu(port: int, files: Sequence[Path] | Path, *, transfer_syntax: str = "explicit",
             calling: str = "SCANNER", called: str = "SEGNODE", timeout_s: float = 120,
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    args = [tool("storescu"), "-aet", calling, "-aec", called, TS_FLAGS[transfer_syntax], *extra]
    if isinstance(files, Path):
        args += ["+sd", "127.0.0.1", str(port), str(files)]
    else:
        args += ["127.0.0.1", str(port), *(str(f) for f in files)]
    return subprocess.run(args, capture_output=True, text=True, timeout=scaled(timeout_s), env=peer_env())


def echoscu(port: int, *, calling: str = "SCANNER", called: str = "SEGNODE",
            extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("echoscu"), "-v", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=scaled(30), env=peer_env())


def tls_flags(key: Path, cert: Path, ca: Path) -> list[str]:
    """DCMTK's options for DICOM over TLS with a client certificate (`+tls key cert`), the CA that must vouch
    for the node's certificate (`+cf`), and its default security profile, non-downgrading BCP 195."""
    return ["+tls", str(key), str(cert), "+cf", str(ca)]
