"""The records the job store hands out: immutable values every part may import (no SQL, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from node.jobs.models import Job, JobEventRow


def aware(at: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time the store returns is in UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One row of the append-only event table; `seq` orders them and is what WebSocket clients resume from."""

    seq: int
    job_id: str
    study_instance_uid: str
    state: str
    progress: float | None
    detail: str
    at: datetime
    data: Mapping[str, Any] | None = field(default=None, compare=False)   # more message keys: `done`'s "delivered"

    @classmethod
    def of(cls, row: JobEventRow) -> JobEvent:
        return cls(row.seq, row.job_id, row.study_instance_uid, row.state, row.progress, row.detail,
                   aware(row.at), row.data)

    def as_message(self) -> dict[str, Any]:
        return {"seq": self.seq, "job_id": self.job_id, "study_instance_uid": self.study_instance_uid,
                "state": self.state, "progress": self.progress, "detail": self.detail,
                "at": self.at.isoformat(), **(self.data or {})}


@dataclass(frozen=True, slots=True)
class ResultFile:
    """One DICOM object a job made, in the job's results folder (`<data>/results/<job id>/<file>`)."""

    kind: str                           # "seg" | "sr"
    file: str
    sop_instance_uid: str
    series_instance_uid: str
    source_series_instance_uid: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where delivery to one destination stands; the first attempt's wall-clock time bounds the retries."""

    delivered: bool = False
    attempts: int = 0
    last_error: str = ""
    first_attempt_at: str = ""
    first_attempt_epoch: float = 0.0
    at: str = ""                        # when it was delivered


@dataclass(frozen=True, slots=True)
class JobResults:
    """What a job produced and where it went: written by the worker (model, series, files), extended by the
    outbox (deliveries), read by the API. Stored as JSON on the job; `as_json` is the API's shape."""

    model: str = ""
    model_version: str = ""
    series: tuple[Mapping[str, Any], ...] = ()      # per series: label map file, shape, measurements
    files: tuple[ResultFile, ...] = ()
    deliveries: Mapping[str, Delivery] = field(default_factory=dict)
    previews: tuple[Mapping[str, Any], ...] = ()    # per series: PNG file, legend, window (node/results/preview.py)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> JobResults:
        raw = raw or {}
        return cls(model=str(raw.get("model", "")), model_version=str(raw.get("model_version", "")),
                   series=tuple(raw.get("series", ())), files=tuple(ResultFile(**f) for f in raw.get("files", ())),
                   deliveries={name: Delivery(**d) for name, d in raw.get("deliveries", {}).items()},
                   previews=tuple(raw.get("previews", ())))

    def as_json(self) -> dict[str, Any]:
        """The stored and API shape; `delivered` (derived, never read back) once a destination has the files."""
        out: dict[str, Any] = {}
        if self.model:
            out.update(model=self.model, model_version=self.model_version, series=[dict(s) for s in self.series])
        if self.files:
            out["files"] = [asdict(f) for f in self.files]
        if self.previews:
            out["previews"] = [dict(p) for p in self.previews]
        if self.deliveries:
            out["deliveries"] = {name: asdict(d) for name, d in self.deliveries.items()}
        if delivered := self.delivered():
            out["delivered"] = delivered
        return out

    def result_series(self) -> list[dict[str, Any]]:
        """The result files as series: [{"kind", "series_instance_uid", "sop_instance_uids"}], in file order."""
        by_series: dict[tuple[str, str], list[str]] = {}
        for f in self.files:
            by_series.setdefault((f.kind, f.series_instance_uid), []).append(f.sop_instance_uid)
        return [{"kind": kind, "series_instance_uid": uid, "sop_instance_uids": sops}
                for (kind, uid), sops in by_series.items()]

    def delivered(self) -> dict[str, list[dict[str, Any]]]:
        """What a viewer waits for: per destination that has the files, the result series and instances
        it now holds ({} when none has them, as with no destination configured)."""
        series = self.result_series()
        return {name: series for name, d in self.deliveries.items() if d.delivered}

    def merged(self, other: JobResults) -> JobResults:
        """This record with what `other` (one writer's part) adds."""
        return JobResults(model=other.model or self.model, model_version=other.model_version or self.model_version,
                          series=other.series or self.series, files=self.files + other.files,
                          deliveries={**self.deliveries, **other.deliveries},
                          previews=self.previews + other.previews)

    def file(self, kind: str) -> ResultFile | None:
        return next((f for f in self.files if f.kind == kind), None)

    def preview(self, name: str) -> Mapping[str, Any] | None:
        """The preview whose file is `name` (only names the job recorded are ever served)."""
        return next((p for p in self.previews if p.get("file") == name), None)


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as it was when read; PHI (patient name and ID) only leaves through `as_dict(phi=True)`."""

    id: str
    study_instance_uid: str
    intake_id: str
    state: str
    detail: str
    progress: float | None
    rule: str
    model: str
    destinations: tuple[str, ...]
    series_instance_uids: tuple[str, ...]
    calling_ae: str
    modality: str
    series_description: str
    instance_count: int
    attempts: int
    results: JobResults
    created_at: datetime
    updated_at: datetime
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.study_instance_uid, job.intake_id, job.state, job.detail, job.progress,
                   job.rule, job.model, tuple(job.destinations or ()), tuple(job.series_instance_uids or ()),
                   job.calling_ae, job.modality, job.series_description, job.instance_count, job.attempts,
                   JobResults.from_json(job.results), aware(job.created_at), aware(job.updated_at),
                   job.patient_name or "", job.patient_id or "")

    def as_dict(self, *, phi: bool = False) -> dict[str, Any]:
        """JSON view; patient name and ID only when `phi` (the admin role)."""
        out = {"id": self.id, "study_instance_uid": self.study_instance_uid, "state": self.state,
               "detail": self.detail, "progress": self.progress, "rule": self.rule, "model": self.model,
               "destinations": list(self.destinations), "series_instance_uids": list(self.series_instance_uids),
               "calling_ae": self.calling_ae, "modality": self.modality,
               "series_description": self.series_description, "instance_count": self.instance_count,
               "attempts": self.attempts, "results": self.results.as_json(),
               "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}
        if phi:
            out.update(patient_name=self.patient_name, patient_id=self.patient_id)
        return out


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One received instance, as the intake hands it to the store (built only by node/intake/door/records.py)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    calling_ae: str
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    patient_name: str = field(default="", repr=False)   # PHI: kept on the job for the admin view only
    patient_id: str = field(default="", repr=False)

    def instance_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("patient_")}


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """Where an instance landed: its intake job, whether it was a resend, the events the write made."""

    intake_id: str
    duplicate: bool
    events: tuple[JobEvent, ...] = field(default=())
