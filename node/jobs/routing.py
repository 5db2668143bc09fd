"""Routing rules: pure functions of header values that pick series, a model and destinations.

Rules are tried in order; the first rule that matches a series takes it. Series of one study taken
by the same rule become one job. A study no rule takes is recorded as ignored with the reasons.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.config_keys import check_keys
from node.errors import ConfigError

_MATCH_KEYS = {"modality", "body_part", "series_description", "calling_ae", "min_slices", "max_slices"}
_RULE_KEYS = {"name", "model", "destinations", "match"}


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """What routing may look at: header values of one received series, no pixel data, no PHI."""

    series_instance_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    calling_ae: str
    instance_count: int


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[rules]]` entry: which series it takes (match), the model to run, where results go."""

    name: str
    model: str
    destinations: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()              # empty = any
    body_part: tuple[str, ...] = ()             # empty = any; compared case-insensitively
    series_description: str = ""                # regex searched in SeriesDescription; empty = any
    calling_ae: tuple[str, ...] = ()            # empty = any
    min_slices: int = 1
    max_slices: int = 0                         # 0 = no maximum
    _pattern: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"[[rules]] {self.name!r}"
        if not self.name:
            raise ConfigError("every [[rules]] entry needs a non-empty name")
        if not self.model:
            raise ConfigError(f"{where} needs a model (for example 'ct-basic')")
        if self.min_slices < 1:
            raise ConfigError(f"{where} match.min_slices must be >= 1, got {self.min_slices}")
        if self.max_slices and self.max_slices < self.min_slices:
            raise ConfigError(f"{where} match.max_slices ({self.max_slices}) is below min_slices ({self.min_slices})")
        try:
            pattern = re.compile(self.series_description, re.IGNORECASE) if self.series_description else None
        except re.error as exc:
            raise ConfigError(f"{where} match.series_description is not a valid regex: {exc}") from None
        object.__setattr__(self, "_pattern", pattern)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], index: int = 0) -> Rule:
        raw = check_keys(raw, _RULE_KEYS, f"[[rules]] entry {index}")
        match = check_keys(raw.get("match", {}), _MATCH_KEYS, f"[[rules]] entry {index} match")

        def strings(value: Any, key: str) -> tuple[str, ...]:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[[rules]] entry {index} {key} must be a list of strings, got {value!r}")
            return tuple(value)

        def integer(value: Any, key: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"[[rules]] entry {index} match.{key} must be an integer, got {value!r}")
            return value

        return cls(
            name=str(raw.get("name", "")),
            model=str(raw.get("model", "")),
            destinations=strings(raw.get("destinations", []), "destinations"),
            modality=tuple(m.upper() for m in strings(match.get("modality", []), "match.modality")),
            body_part=tuple(b.upper() for b in strings(match.get("body_part", []), "match.body_part")),
            series_description=str(match.get("series_description", "")),
            calling_ae=strings(match.get("calling_ae", []), "match.calling_ae"),
            min_slices=integer(match.get("min_slices", 1), "min_slices"),
            max_slices=integer(match.get("max_slices", 0), "max_slices"),
        )

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "destinations": list(self.destinations),
                "match": {"modality": list(self.modality), "body_part": list(self.body_part),
                          "series_description": self.series_description, "calling_ae": list(self.calling_ae),
                          "min_slices": self.min_slices, "max_slices": self.max_slices}}

    def mismatch(self, series: SeriesInfo) -> str | None:
        """None when the rule takes the series, else why not (for the 'ignored' reason)."""
        if self.modality and series.modality.upper() not in self.modality:
            return f"modality {series.modality or '(none)'} not in {'/'.join(self.modality)}"
        if self.body_part and series.body_part_examined.upper() not in self.body_part:
            return f"body part {series.body_part_examined or '(none)'} not in {'/'.join(self.body_part)}"
        if self._pattern is not None and not self._pattern.search(series.series_description):
            return f"series description does not match /{self.series_description}/"
        if self.calling_ae and series.calling_ae not in self.calling_ae:
            return f"calling AE {series.calling_ae} not in {'/'.join(self.calling_ae)}"
        if series.instance_count < self.min_slices:
            return f"{series.instance_count} instance(s), rule needs at least {self.min_slices}"
        if self.max_slices and series.instance_count > self.max_slices:
            return f"{series.instance_count} instances, rule takes at most {self.max_slices}"
        return None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    rule: str
    model: str
    destinations: tuple[str, ...]
    series_instance_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoutingOutcome:
    decisions: tuple[RouteDecision, ...]
    ignored: Mapping[str, str]                 # series UID -> why no rule took it

    def ignored_reason(self) -> str:
        if not self.ignored:
            return ""
        parts = [f"series ...{uid[-12:]}: {why}" for uid, why in self.ignored.items()]
        return "no rule matched: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one rule says about one series: it takes it, or why not (a rule after the taker is not reached)."""

    rule: str
    takes: bool
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "takes": self.takes, "why": self.why}


def explain(series: SeriesInfo, rules: Sequence[Rule]) -> list[Verdict]:
    """Every rule's verdict on `series`, in order; the first rule that matches takes it, later ones are
    reported as not reached (with whether they would have matched)."""
    out: list[Verdict] = []
    taker = ""
    for rule in rules:
        why = rule.mismatch(series)
        if taker:
            out.append(Verdict(rule.name, False, f"not reached: rule {taker} took it first"
                                                 + (f" (and {why})" if why else " (it would match too)")))
        elif why is None:
            taker = rule.name
            out.append(Verdict(rule.name, True))
        else:
            out.append(Verdict(rule.name, False, why))
    return out


def route(series: Sequence[SeriesInfo], rules: Sequence[Rule]) -> RoutingOutcome:
    """Assign each series to the first rule that takes it (see `explain`); group a study's series by rule."""
    taken: dict[str, list[str]] = {}
    ignored: dict[str, str] = {}
    for s in series:
        verdicts = explain(s, rules)
        taker = next((v.rule for v in verdicts if v.takes), None)
        if taker is not None:
            taken.setdefault(taker, []).append(s.series_instance_uid)
        else:
            reasons = [f"{v.rule}: {v.why}" for v in verdicts]
            ignored[s.series_instance_uid] = "; ".join(reasons) if reasons else "no routing rules configured"
    by_name = {r.name: r for r in rules}
    decisions = tuple(RouteDecision(rule=name, model=by_name[name].model,
                                    destinations=by_name[name].destinations,
                                    series_instance_uids=tuple(uids))
                      for name, uids in taken.items())
    return RoutingOutcome(decisions=decisions, ignored=ignored)
