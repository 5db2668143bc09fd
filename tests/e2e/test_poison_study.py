"""A study that kills the whole node mid-inference (SIGKILL, as the OOM killer would) ends failed after
`[compute] max_attempts` runs instead of putting the node in a crash loop; the next study is served."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.synth.series import SeriesIds, write_series
from tests.builders.stall_bundle import INFERENCE_STAGE, POISON_RULES, build_stall_bundle
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.helpers import wait_until
from tests.peers.node_process import NodeProcess


def children(pid: int) -> set[int]:
    """Child processes of `pid` (spawned from any of its threads)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(c) for c in text}
    return out


def inference_runs(node: NodeProcess, job_id: str) -> int:
    return sum(e["detail"] == INFERENCE_STAGE for e in node.job(job_id)["events"])


def only_job(node: NodeProcess) -> dict[str, Any]:
    return wait_until(lambda: (lambda j: j[0] if j else None)(node.jobs()), 30, "the poison job")


def test_a_study_that_kills_the_node_three_times_ends_failed_and_the_next_one_is_served(
        start_node: Callable[..., NodeProcess], tmp_path: Path) -> None:
    build_stall_bundle(tmp_path / "models" / "stall")
    node = start_node(config=POISON_RULES, models__dir=str(tmp_path / "models"), compute__max_attempts="3")
    folder = write_series(tmp_path / "poison", slices=12, rows=32, ids=SeriesIds(series_description="poison"))
    assert storescu(node.dicom_port, folder[0].parent).returncode == 0
    job_id = only_job(node)["id"]
    for kill in (1, 2, 3):
        wait_until(lambda k=kill: inference_runs(node, job_id) >= k, 90, f"inference run {kill}", interval_s=0.2)
        assert node.proc is not None
        model_processes = children(node.proc.pid)
        assert model_processes, "inference should run in a child process"
        assert node.kill(signal.SIGKILL) == -signal.SIGKILL
        wait_until(lambda m=model_processes: not any(Path(f"/proc/{p}").exists() for p in m), 10,
                   "the model process to exit with its node")
        node.start(timeout_s=60)
        assert echoscu(node.dicom_port).returncode == 0
    job = node.job(job_id)
    assert job["state"] == "failed", job
    assert "the node stopped while it was running, 3 times" in job["detail"]
    assert sum(e["detail"].startswith("claimed by a worker") for e in job["events"]) == 3
    ids = SeriesIds()
    good = write_series(tmp_path / "good", slices=12, rows=32, ids=ids)
    assert storescu(node.dicom_port, good[0].parent).returncode == 0
    done = node.wait_jobs("done", 1, timeout_s=60)
    assert [j["study_instance_uid"] for j in done] == [ids.study_instance_uid]
    assert node.job(job_id)["state"] == "failed"
