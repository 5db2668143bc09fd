"""What a `done` event lists: the job's result files grouped as series, per destination."""

from __future__ import annotations

from node.outbox import result_series


def test_result_files_become_series_with_their_instances_in_order() -> None:
    files = [{"kind": "seg", "file": "seg-a.dcm", "sop_instance_uid": "1.1", "series_instance_uid": "9.1"},
             {"kind": "sr", "file": "sr-a.dcm", "sop_instance_uid": "2.1", "series_instance_uid": "9.2"},
             {"kind": "seg", "file": "seg-b.dcm", "sop_instance_uid": "1.2", "series_instance_uid": "9.1"}]
    assert result_series(files) == [
        {"kind": "seg", "series_instance_uid": "9.1", "sop_instance_uids": ["1.1", "1.2"]},
        {"kind": "sr", "series_instance_uid": "9.2", "sop_instance_uids": ["2.1"]}]
    assert result_series([]) == []
