"""Debian's headless Chromium, as the browser tests launch it (Playwright drives it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, offline: no sandbox, no GPU, none of Chromium's calls home.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def trusting(ca_cert: Path, home: Path) -> dict[str, str]:
    """An environment for Chromium (Playwright's `launch(env=...)`) that trusts `ca_cert` as a CA for servers,
    as a hospital's managed browser trusts its own CA: Chromium on Linux takes its trust store from the NSS
    database in $HOME/.pki/nssdb, so `home` gets one holding that CA. No certificate error is ignored.
    Needs NSS's certutil (Debian: libnss3-tools)."""
    certutil = shutil.which("certutil")
    if certutil is None:
        raise RuntimeError("certutil is needed to make Chromium trust the test CA: apt-get install libnss3-tools")
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    for args in (["-N", "--empty-password"], ["-A", "-n", "Segnode test CA", "-t", "C,,", "-i", str(ca_cert)]):
        subprocess.run([certutil, "-d", f"sql:{db}", *args], check=True, capture_output=True, timeout=30)
    return {**os.environ, "HOME": str(home)}
