import numpy as np
import pytest
import torch

from ai.ct_basic import BONE, LUNGS, SOFT_TISSUE, CtBasic, fill_enclosed
from ai.errors import UnsuitableSeries
from ai.measure import dice, measure
from ai.volume import volume_from_datasets
from node.synth.phantom import BODY, make_phantom
from node.synth.phantom import BONE as TRUTH_BONE
from node.synth.phantom import LUNGS as TRUTH_LUNGS
from node.synth.series import SeriesIds, phantom_datasets


@pytest.fixture(scope="module")
def phantom_volume():
    p = make_phantom(slices=40, rows=128, seed=11)
    return p, volume_from_datasets(phantom_datasets(p))


def test_ct_basic_reaches_dice_095_per_structure_on_the_phantom(phantom_volume) -> None:
    p, v = phantom_volume
    labels = CtBasic("cpu").predict(v)
    truth = p.truth[::-1]                 # the volume runs caudal -> cranial
    for ours, theirs in ((SOFT_TISSUE, BODY), (LUNGS, TRUTH_LUNGS), (BONE, TRUTH_BONE)):
        assert dice(labels == ours, truth == theirs) >= 0.95, f"label {ours}"


def test_ct_basic_is_deterministic(phantom_volume) -> None:
    _, v = phantom_volume
    assert np.array_equal(CtBasic().predict(v), CtBasic().predict(v))


def test_ct_basic_refuses_mr_with_a_reason() -> None:
    p = make_phantom(slices=5, rows=32)
    v = volume_from_datasets(phantom_datasets(p, SeriesIds(modality="MR")))
    with pytest.raises(UnsuitableSeries, match="model ct-basic segments CT; this series is MR"):
        CtBasic().predict(v)


def test_hole_filling_closes_enclosed_holes_but_not_open_bays() -> None:
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 1:8, 1:8] = True
    m[0, 3:6, 3:6] = False            # enclosed hole
    m[0, 4, 6:8] = True               # (no-op, already set)
    filled = fill_enclosed(m)
    assert filled[0, 4, 4]
    bay = torch.zeros(1, 9, 9, dtype=torch.bool)
    bay[0, 1:8, 1:8] = True
    bay[0, 3:6, 3:8] = False          # open to the right edge
    assert not fill_enclosed(bay)[0, 4, 4]


def test_measurements_of_a_known_cube() -> None:
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 5:15, 5:10] = LUNGS                   # 4 x 10 x 5 voxels
    values = np.full(labels.shape, -1000, np.float32)
    values[2:6, 5:15, 5:10] = np.where(np.arange(5) % 2 == 0, -800, -900)[None, None, :]
    (m,) = measure(labels, values, (2.0, 1.0, 0.5), CtBasic.card)
    assert m.name == "Lungs" and m.voxel_count == 200
    assert m.volume_ml == pytest.approx(200 * 1.0 / 1000)
    assert m.mean == pytest.approx(-840) and m.min == -900 and m.max == -800
    assert m.std == pytest.approx(np.std([-800, -900, -800, -900, -800]))
    assert m.extent_mm == pytest.approx((8.0, 10.0, 2.5))


def test_measure_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        measure(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3)), (1, 1, 1), CtBasic.card)
