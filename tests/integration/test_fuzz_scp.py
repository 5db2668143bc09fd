"""Fuzzing the SCP with mutants of one valid CT slice: answered, up, nothing lost, nothing undecodable kept.

A few hundred seeded mutants run here; `bench/fuzz_scp.py` runs thousands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from node.app import Node
from node.intake.wire.dimse import StoreStatus
from node.synth.series import write_datasets
from tests.builders.mutants import decodable, mutants
from tests.peers.scu import send, send_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")     # mutants make pydicom warn a lot
ACKNOWLEDGED = {StoreStatus.SUCCESS, StoreStatus.COERCED}


@pytest.mark.parametrize("seed", [1, 2])
async def test_mutants_are_answered_and_only_decodable_ones_kept(node: Node, ct_series: list[Dataset],
                                                                tmp_path: Path, seed: int) -> None:
    source = write_datasets(tmp_path / "source", [ct_series[0]])[0]
    cases = list(mutants(source, tmp_path / "mutants", count=150, seed=seed))
    statuses = await send_files(node, [path for _kind, path in cases])

    assert all(s is not None for s in statuses), "an association was aborted instead of answered"
    acknowledged = {dcmread(p, stop_before_pixels=True, force=True).get("SOPInstanceUID")
                    for (_k, p), s in zip(cases, statuses, strict=True) if s.Status in ACKNOWLEDGED}
    spooled = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in node.spool.iter_instances()}
    assert acknowledged <= set(spooled), "an acknowledged instance is missing from the spool"
    undecodable = [p.name for uid, p in spooled.items() if uid in acknowledged and not decodable(p)]
    assert undecodable == []
    refused = [s for s in statuses if s.Status not in ACKNOWLEDGED]
    assert refused and all(s.Status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)
                           and s.ErrorComment for s in refused)
    [after] = await send(node, [ct_series[1]])                 # still up and storing
    assert after.Status == StoreStatus.SUCCESS
