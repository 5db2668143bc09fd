"""`segnode serve` pointed at a running Ray cluster (`[compute] ray_address`): a study sent with DCMTK
runs to done on the cluster's actors, and the node leaving does not take the cluster down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.synth.series import write_series
from tests.peers.dcmtk import storescu
from tests.peers.helpers import REPO, free_port, scaled
from tests.peers.node_process import NodeProcess
from tests.peers.postgres import PostgresServer
from tests.peers.ray_cluster import RayHead

RULE = '[[rules]]\nname = "ct"\nmodel = "ct-basic"\ndestinations = []\n'


@pytest.fixture
def ray_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RayHead]:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")          # the node's environment inherits it
    head = RayHead(tmp_path / "ray", num_cpus=2, num_gpus=2).start()
    yield head
    head.stop()


def test_a_study_runs_to_done_on_a_ray_cluster_with_one_actor_per_gpu(
        ray_head: RayHead, start_node: Callable[..., NodeProcess], tmp_path: Path, postgres: PostgresServer) -> None:
    """The README's scale-out recipe as written: a Ray cluster by address and the job store on PostgreSQL."""
    # the head declares 2 GPUs (Ray's resources are logical); workers = 0 asks for one actor per GPU.
    # The model itself runs on the CPU: torch finds no CUDA here, and device "auto" falls back.
    node = start_node("node", RULE, compute__backend="ray", compute__ray_address=ray_head.address,
                      compute__workers="0", compute__ray_gpus_per_actor="1", node__log_level="INFO",
                      store__url=postgres.new_database())
    health = node.get("/api/health")
    assert health["compute"]["backend"] == "ray"
    assert health["compute"]["placement"] == \
        f"the Ray cluster at {ray_head.address} (2 CPUs, 2 GPUs): 2 actor(s) of 1 CPU(s), 1 GPU(s)"
    files = write_series(tmp_path / "ct", slices=24, rows=96)
    assert storescu(node.dicom_port, files[0].parent).returncode == 0
    job = node.wait_jobs("done", 1, timeout_s=120)[0]
    detail = node.job(job["id"])
    kinds = sorted(f["kind"] for f in detail["results"]["files"])
    assert kinds == ["seg", "sr"]
    assert any("Ray actor" in e["detail"] for e in detail["events"]), detail["events"]
    assert node.get("/api/health")["store"] == {"ok": True, "database": "postgresql"}
    assert f"inference on the Ray cluster at {ray_head.address}" in node.log()
    node.stop()
    assert ray_head.alive, "stopping the node must not stop the cluster it used"


def test_an_unreachable_ray_cluster_stops_the_start_at_once_with_one_sentence(tmp_path: Path) -> None:
    silent = free_port()                    # nothing listens here
    env = {**os.environ, "SEGNODE_NODE__DATA_DIR": str(tmp_path / "data"), "SEGNODE_DICOM__PORT": "0",
           "SEGNODE_HTTP__PORT": "0", "SEGNODE_COMPUTE__BACKEND": "ray",
           "SEGNODE_COMPUTE__RAY_ADDRESS": f"127.0.0.1:{silent}"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "node.cli", "serve"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=scaled(60))
    assert done.returncode == 1, done.stderr
    assert f"segnode: cannot start: cannot reach the Ray cluster at 127.0.0.1:{silent}" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 30
