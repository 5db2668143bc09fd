"""What a `done` event lists: the job's result files grouped as series, per destination that has them."""

from __future__ import annotations

from node.jobs.records import Delivery, JobResults, ResultFile


def _file(kind: str, name: str, sop: str, series: str) -> ResultFile:
    return ResultFile(kind=kind, file=name, sop_instance_uid=sop, series_instance_uid=series,
                      source_series_instance_uid="1.2.3")


FILES = (_file("seg", "seg-a.dcm", "1.1", "9.1"), _file("sr", "sr-a.dcm", "2.1", "9.2"),
         _file("seg", "seg-b.dcm", "1.2", "9.1"))
SERIES = [{"kind": "seg", "series_instance_uid": "9.1", "sop_instance_uids": ["1.1", "1.2"]},
          {"kind": "sr", "series_instance_uid": "9.2", "sop_instance_uids": ["2.1"]}]


def test_result_files_become_series_with_their_instances_in_order() -> None:
    assert JobResults(files=FILES).result_series() == SERIES
    assert JobResults().result_series() == []


def test_delivered_lists_only_the_destinations_that_have_the_files() -> None:
    results = JobResults(files=FILES, deliveries={"pacs": Delivery(delivered=True, attempts=1),
                                                  "backup": Delivery(attempts=2, last_error="refused")})
    assert results.delivered() == {"pacs": SERIES}
    assert results.as_json()["delivered"] == {"pacs": SERIES}
    assert JobResults.from_json(results.as_json()) == results          # derived: never read back
    assert JobResults(files=FILES).delivered() == {}
    assert "delivered" not in JobResults(files=FILES).as_json()
