import pytest

from node.intake.assembly import StudyAssembler
from tests.support import FakeClock


def test_study_is_stable_only_after_the_quiet_period() -> None:
    clock = FakeClock()
    a = StudyAssembler(quiet_period_s=30, now=clock)
    a.instance_received("s1")
    clock.advance(29.9)
    assert a.pop_stable() == []
    clock.advance(0.2)
    assert a.pop_stable() == ["s1"]
    assert a.pop_stable() == []


def test_a_new_instance_restarts_the_quiet_period() -> None:
    clock = FakeClock()
    a = StudyAssembler(quiet_period_s=10, now=clock)
    a.instance_received("s1")
    clock.advance(8)
    a.instance_received("s1")
    clock.advance(8)
    assert a.pop_stable() == []
    assert a.next_deadline() == pytest.approx(2)
    clock.advance(2)
    assert a.pop_stable() == ["s1"]


def test_stable_studies_come_oldest_first_and_deadline_tracks_the_oldest() -> None:
    clock = FakeClock()
    a = StudyAssembler(quiet_period_s=5, now=clock)
    assert a.next_deadline() is None
    a.instance_received("late")
    clock.advance(1)
    a.instance_received("later")
    clock.advance(10)
    assert a.pop_stable() == ["late", "later"]


def test_quiet_period_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StudyAssembler(quiet_period_s=0)


def test_only_a_new_study_can_bring_the_next_deadline_forward() -> None:
    """The ingest task is woken only when instance_received says so: a known study's deadline only moves
    later, so the wait already under way stays right (and a study of 300 instances wakes it once)."""
    clock = FakeClock()
    a = StudyAssembler(quiet_period_s=10, now=clock)
    assert a.instance_received("s1") is True
    deadline = a.next_deadline()
    clock.advance(3)
    assert a.instance_received("s1") is False
    assert a.next_deadline() == pytest.approx(10) and deadline == pytest.approx(10)
    assert a.instance_received("s2") is True
    clock.advance(10)
    assert a.pop_stable() == ["s1", "s2"]
    assert a.instance_received("s1") is True          # popped: the next instance starts a new wait
