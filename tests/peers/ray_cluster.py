"""A real Ray cluster head (`ray start --head --block`) on a free loopback port, stopped by its process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.peers.helpers import free_port, wait_until

RAY = Path(sys.executable).with_name("ray")


class RayHead:
    def __init__(self, workdir: Path, num_cpus: int = 2, num_gpus: int = 0) -> None:
        self.workdir = workdir
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus      # logical: Ray schedules by it; torch still finds no CUDA on this machine
        self.port = free_port()         # ephemeral range: clear of Ray's worker ports (10002-19999)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, timeout_s: float = 60) -> RayHead:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "ray-head.log", "wb")      # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--port", str(self.port), "--num-cpus", str(self.num_cpus),
             "--num-gpus", str(self.num_gpus), "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
             "--disable-usage-stats"], env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self._up, timeout_s, "the Ray head to accept drivers", interval_s=0.5)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"ray start exited with {self.proc.returncode}:\n{self.log()}")
        return "Ray runtime started" in self.log()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        p = self.workdir / "ray-head.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        """SIGINT the head's process group, then SIGKILL what is left; its workers exit with their raylet."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGINT, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
