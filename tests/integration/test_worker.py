"""Studies sent by a real SCU become label maps with measurements, or failed jobs that say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from node.app import Node
from node.compute.pipeline import Outcome, Progress
from node.compute.worker import Worker
from node.jobs.records import InstanceRecord, JobView
from node.jobs.routing import Rule, route
from node.jobs.store import JobStore
from node.synth.phantom import BONE, LUNGS, make_phantom
from node.synth.series import SeriesIds, phantom_datasets
from tests.peers.scu import final_job, send
from tests.support import running_node

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

RULES = """
[[rules]]
name = "via-bundle"
model = "phantom-threshold"
match = { series_description = "bundle" }
[[rules]]
name = "unknown-model"
model = "no-such-model"
match = { series_description = "unknown" }
[[rules]]
name = "anything"
model = "ct-basic"
"""


@pytest.fixture
async def wnode(tmp_path: Path, models_dir: Path, request: pytest.FixtureRequest):
    """A node with the suite's bundles; a test may ask for the PostgreSQL store (indirect "postgresql")."""
    url = request.getfixturevalue("postgres").new_database() if getattr(request, "param", "") == "postgresql" else ""
    async with running_node(tmp_path, RULES, models__dir=str(models_dir), store__url=url) as n:
        yield n


@pytest.mark.parametrize("wnode", ["sqlite", "postgresql"], indirect=True)
async def test_a_ct_study_becomes_a_label_map_with_measurements(wnode: Node) -> None:
    p = make_phantom(slices=30, rows=96, seed=8)
    ds = phantom_datasets(p, SeriesIds())
    await send(wnode, ds)
    job = await final_job(wnode, ds[0].StudyInstanceUID)
    assert job.state == "done", job.detail
    results = json.loads((wnode.settings.node.data_path / "results" / job.id / "measurements.json").read_text())
    volumes = {m["name"]: m["volume_ml"] for m in results["series"][0]["measurements"]}
    assert volumes["Lungs"] == pytest.approx(p.volume_ml(LUNGS), rel=0.02)
    assert volumes["Bone"] == pytest.approx(p.volume_ml(BONE), rel=0.02)
    labels = np.load(wnode.settings.node.data_path / "results" / job.id / results["series"][0]["labels"])["labels"]
    assert labels.shape == p.hu.shape
    events = await wnode.store.events(job.id)
    running = [e for e in events if e.state == "running" and e.progress is not None and 0 < e.progress < 1]
    assert running, "no progress was published while running"
    assert [e.progress for e in running] == sorted(e.progress for e in running)
    ready = next(e for e in events if e.state == "sending")
    assert "Lungs" in ready.detail and "Bone" in ready.detail


async def test_a_bundle_picked_by_a_rule_runs(wnode: Node) -> None:
    ds = phantom_datasets(make_phantom(slices=20, rows=64, seed=2), SeriesIds(series_description="for bundle"))
    await send(wnode, ds)
    job = await final_job(wnode, ds[0].StudyInstanceUID)
    assert (job.state, job.model) == ("done", "phantom-threshold"), job.detail
    names = [m["name"] for m in job.results.series[0]["measurements"]]
    assert names == ["Soft tissue", "Lung", "Bone"]


@pytest.mark.parametrize(("build", "reason"), [
    (lambda ds: ds, "model ct-basic segments CT; this series is MR"),
    (lambda ds: ds[:2], "has 2 image(s); a volume needs at least 3"),
    (lambda ds: ds[:4] + ds[5:], "slice spacing is irregular"),
])
async def test_series_the_model_cannot_take_end_failed_with_the_reason(wnode: Node, build, reason: str) -> None:
    modality = "MR" if "MR" in reason else "CT"
    ds = build(phantom_datasets(make_phantom(slices=12, rows=32, seed=1), SeriesIds(modality=modality)))
    if modality == "MR":
        for d in ds:
            d.SOPClassUID = d.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    await send(wnode, ds)
    job = await final_job(wnode, ds[0].StudyInstanceUID)
    assert job.state == "failed"
    assert reason in job.detail


async def test_an_unknown_model_fails_the_job_and_names_the_known_ones(wnode: Node) -> None:
    ds = phantom_datasets(make_phantom(slices=5, rows=32), SeriesIds(series_description="unknown thing"))
    await send(wnode, ds)
    job = await final_job(wnode, ds[0].StudyInstanceUID)
    assert job.state == "failed" and "no model 'no-such-model'" in job.detail and "ct-basic" in job.detail


async def test_the_node_keeps_working_after_a_failed_job(wnode: Node) -> None:
    bad = phantom_datasets(make_phantom(slices=12, rows=32), SeriesIds())[:2]
    good = phantom_datasets(make_phantom(slices=12, rows=32), SeriesIds())
    await send(wnode, bad)
    await send(wnode, good)
    assert (await final_job(wnode, bad[0].StudyInstanceUID)).state == "failed"
    assert (await final_job(wnode, good[0].StudyInstanceUID)).state == "done"


class OomBackend:
    """A Backend whose GPU runs out of memory on every job, as torch reports it."""

    device = torch.device("cuda")

    async def run(self, job: JobView, inputs: dict[str, list[str]], folder: Path, progress: Progress) -> Outcome:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    async def close(self) -> None:
        return None

    def placement(self) -> str:
        return "nowhere: a test backend"


async def test_cuda_out_of_memory_fails_the_job_with_advice(tmp_path: Path, ct_files: list[Path]) -> None:
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path / 'j.db'}")
    try:
        study = generate_uid()
        for i, f in enumerate(ct_files):
            await store.record_instance(InstanceRecord(
                sop_instance_uid=f"1.2.{i}", study_instance_uid=study, series_instance_uid="1.3",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(f), size=1, calling_ae="X", modality="CT"))
        intake = (await store.list_jobs())[0].id
        series = await store.series_of_intake(intake)
        await store.route_intake(intake, route(series, [Rule(name="any", model="oom")]), series)
        job, _ = await store.claim_next()
        await Worker(store, OomBackend(), tmp_path / "results").process(job)
        done = await store.get(intake)
        assert done.state == "failed" and "GPU ran out of memory" in done.detail
    finally:
        await store.close()


