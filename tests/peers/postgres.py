"""A throw-away PostgreSQL server (Debian's `postgresql`) on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.peers.helpers import free_port, scaled, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _pg_bin() -> Path:
    if (PG_BIN / "initdb").exists():
        return PG_BIN
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed; run `make test` (it installs Debian's postgresql)")
    return found[-1].parent


class PostgresServer:
    """initdb in a temp folder owned by an unprivileged user (`postgres` when run as root), trust auth on
    127.0.0.1 only; `stop()` signals the postmaster's PID and `start()` brings it back on the same port."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="segnode-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.pid = 0

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120), cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def start(self) -> PostgresServer:
        opts = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    @property
    def running(self) -> bool:
        if not self.pid:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().split(") ", 1)[1][0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster): open sessions are cut, as in a database restart."""
        if self.running:
            os.kill(self.pid, signal.SIGINT)
            wait_until(lambda: not self.running, timeout_s, "PostgreSQL to stop", interval_s=0.05)
        self.pid = 0

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-Atqc", sql).stdout

    def new_database(self) -> str:
        """A fresh, empty database; returns its asyncpg URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def server_log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_for_port(server: PostgresServer, timeout_s: float = 10) -> None:
    """Until the server accepts connections again (after `start()`)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        try:
            server.psql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
