"""Debian's headless Chromium, as the browser tests launch it (Playwright drives it)."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root, offline: no sandbox, no GPU, none of Chromium's calls home.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
