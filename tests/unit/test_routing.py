import pytest

from node.errors import ConfigError
from node.jobs.routing import Rule, SeriesInfo, explain, route


def series(uid: str = "1.1", modality: str = "CT", body: str = "CHEST", desc: str = "Thorax 1mm",
           ae: str = "SCANNER", n: int = 100) -> SeriesInfo:
    return SeriesInfo(uid, modality, body, desc, ae, n)


CT = Rule(name="ct", model="ct-basic", modality=("CT",), min_slices=10)


def test_first_matching_rule_takes_the_series() -> None:
    rules = [Rule(name="thin", model="fine", modality=("CT",), series_description=r"1\s*mm"), CT]
    outcome = route([series()], rules)
    assert [(d.rule, d.model) for d in outcome.decisions] == [("thin", "fine")]


def test_series_of_a_study_taken_by_the_same_rule_make_one_decision() -> None:
    outcome = route([series("1.1"), series("1.2")], [CT])
    assert len(outcome.decisions) == 1
    assert outcome.decisions[0].series_instance_uids == ("1.1", "1.2")


def test_a_series_no_rule_takes_is_ignored_with_each_rules_reason() -> None:
    rules = [CT, Rule(name="brain", model="b", body_part=("HEAD",))]
    outcome = route([series(modality="MR", body="KNEE")], rules)
    assert outcome.decisions == ()
    reason = outcome.ignored_reason()
    assert "ct: modality MR not in CT" in reason
    assert "brain: body part KNEE not in HEAD" in reason


@pytest.mark.parametrize(("info", "why"), [
    (series(n=5), "5 instance(s), rule needs at least 10"),
    (series(ae="OTHER"), "calling AE OTHER not in SCANNER"),
    (series(desc="Scout"), "series description does not match"),
    (series(n=600), "600 instances, rule takes at most 500"),
])
def test_each_match_key_is_checked(info: SeriesInfo, why: str) -> None:
    rule = Rule(name="r", model="m", modality=("CT",), min_slices=10, max_slices=500, calling_ae=("SCANNER",),
                series_description="thorax")
    assert why in (rule.mismatch(info) or "")


def test_body_part_is_compared_case_insensitively() -> None:
    rule = Rule.from_mapping({"name": "r", "model": "m", "match": {"body_part": ["chest"]}})
    assert rule.mismatch(series(body="Chest")) is None


def test_no_rules_means_ignored_and_says_so() -> None:
    assert route([series()], []).ignored["1.1"] == "no routing rules configured"


def test_unknown_match_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        Rule.from_mapping({"name": "r", "model": "m", "match": {"modallity": ["CT"]}})


def test_explain_gives_every_rules_verdict_and_route_follows_it() -> None:
    rules = [Rule(name="mr", model="m", modality=("MR",)), CT, Rule(name="any", model="a")]
    verdicts = explain(series(), rules)
    assert [(v.rule, v.takes, v.why) for v in verdicts] == [
        ("mr", False, "modality CT not in MR"), ("ct", True, ""),
        ("any", False, "not reached: rule ct took it first (it would match too)")]
    assert [d.rule for d in route([series()], rules).decisions] == ["ct"]
    later = explain(series(n=5), [Rule(name="any", model="a"), CT])
    assert later[1].why == "not reached: rule any took it first (and 5 instance(s), rule needs at least 10)"
