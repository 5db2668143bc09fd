"""`segnode serve` as a real subprocess on free loopback ports, stopped by PID.

With `http__https="true"` (and the `tls__` settings) the helpers talk HTTPS to the node's API, trusting
`ca_file` (the CA that issued the node's `[tls]` certificate; none: the system's trust store)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.peers.helpers import REPO, free_port, scaled, wait_until


class NodeProcess:
    def __init__(self, workdir: Path, config: str | None = None, *, repo: Path = REPO,
                 ca_file: str | Path | None = None, **settings: str) -> None:
        self.workdir = workdir
        self.repo = repo                      # the checkout whose node runs (bench: another commit's worktree)
        self.config = config
        self.data_dir = workdir / "data"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.tls_port = free_port()
        self.log_path = workdir / "node.log"
        self.env = {**os.environ, "SEGNODE_NODE__DATA_DIR": str(self.data_dir),
                    "SEGNODE_DICOM__PORT": str(self.dicom_port), "SEGNODE_HTTP__PORT": str(self.http_port),
                    "SEGNODE_DICOM__TLS_PORT": str(self.tls_port),
                    "SEGNODE_DICOM__BIND_ADDRESS": "127.0.0.1", "SEGNODE_DICOM__STUDY_QUIET_PERIOD_S": "1",
                    "SEGNODE_DICOM__MIN_FREE_DISK_MB": "1"}
        self.env.update({f"SEGNODE_{k.upper()}": v for k, v in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None
        self.https = settings.get("http__https", "false").strip().lower() in ("true", "1", "yes", "on")
        self.ssl_context: ssl.SSLContext | None = (
            ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if self.https else None)

    @property
    def url(self) -> str:
        """The API's origin: http://127.0.0.1:<port>, or https:// when the node serves HTTPS."""
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "node.cli", "serve"]
        if self.config is not None:
            cfg = self.workdir / "segnode.toml"
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.repo, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"segnode exited with {self.proc.returncode}:\n{self.log()}")
            try:
                dicom = self.get("/api/health")["dicom"]
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ssl.SSLCertVerificationError):
                    raise AssertionError(f"segnode's certificate is not trusted: {exc.reason}") from None
                return False
            except OSError:
                return False
            return bool(dicom["listening"])
        wait_until(ready, timeout_s, "segnode to answer /api/health", interval_s=0.1)
        return self

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=scaled(5), context=self.ssl_context) as rsp:
                return json.loads(rsp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}")

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.get("/api/jobs" + (f"?state={state}" if state else ""))["jobs"]

    def wait_jobs(self, state: str, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
        return wait_until(lambda: (lambda j: j if len(j) >= count else None)(self.jobs(state)), timeout_s,
                          f"{count} job(s) in state {state}", interval_s=0.2)

    def spooled(self) -> list[Path]:
        return sorted((self.data_dir / "spool").glob("*/*/*.dcm"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 40) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(scaled(timeout_s))
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.proc = None

