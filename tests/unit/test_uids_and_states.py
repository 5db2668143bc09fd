import itertools

import pytest
from pydicom.dataset import Dataset

from node.errors import InvalidUID
from node.intake.door.uids import InstanceUIDs, check_uid
from node.jobs.states import ALLOWED, JobState


@pytest.mark.parametrize(("value", "why"), [
    (None, "is missing"), ("", "is missing"), ("1." + "2" * 63, "longer than 64"),
    ("../../etc", "characters other than digits and dots"), ("1.2/3", "characters other than"),
    ("1.2.", "characters other than"), ("1..2", "characters other than"), ("1.2\\3", "characters other than"),
])
def test_hostile_or_broken_uids_are_refused(value: object, why: str) -> None:
    with pytest.raises(InvalidUID, match=why):
        check_uid(value, "StudyInstanceUID")


def test_padding_is_stripped_and_leading_zero_components_are_tolerated() -> None:
    assert check_uid("1.2.840.10008\x00", "X") == "1.2.840.10008"
    assert check_uid("1.02.3", "X") == "1.02.3"


def test_instance_uids_name_the_missing_attribute() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID = "1.2", "1.3", "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(InvalidUID, match="SOPInstanceUID is missing"):
        InstanceUIDs.from_dataset(ds)


def test_state_machine_follows_the_design() -> None:
    chain = [JobState.RECEIVING, JobState.QUEUED, JobState.RUNNING, JobState.SENDING, JobState.DONE]
    assert all(b in ALLOWED[a] for a, b in itertools.pairwise(chain))
    assert JobState.QUEUED in ALLOWED[JobState.FAILED]
    assert JobState.QUEUED not in ALLOWED[JobState.DONE]
    assert JobState.DONE not in ALLOWED[JobState.QUEUED]
    for s in (JobState.QUEUED, JobState.RUNNING, JobState.SENDING):
        assert {JobState.FAILED, JobState.CANCELLED} <= ALLOWED[s]
