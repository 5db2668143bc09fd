"""Instance records as the intake would hand them to the job store, for store-level tests."""

from __future__ import annotations

from node.jobs.records import InstanceRecord


def rec(sop: str, study: str = "1.2.3", series: str = "1.2.3.4", modality: str = "CT") -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=sop, study_instance_uid=study, series_instance_uid=series,
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                          path=f"/spool/{sop}.dcm", size=10, calling_ae="SCANNER", modality=modality)
