import numpy as np
from pydicom import dcmread

from node.synth.phantom import BODY, BONE, LUNGS, make_phantom
from node.synth.series import write_series
from tests.peers.helpers import dciodvfy


def test_phantom_has_body_lungs_and_bone_at_plausible_hounsfield_units() -> None:
    p = make_phantom(slices=20, rows=64, seed=3)
    assert p.hu.shape == p.truth.shape == (20, 64, 64)
    for label, lo, hi in ((BODY, 0, 80), (LUNGS, -900, -800), (BONE, 650, 750)):
        assert lo < float(np.mean(p.hu[p.truth == label])) < hi
    assert p.volume_ml(LUNGS) > p.volume_ml(BONE) > 0


def test_phantom_is_deterministic_for_a_seed() -> None:
    assert np.array_equal(make_phantom(4, 32, seed=7).hu, make_phantom(4, 32, seed=7).hu)


def test_written_series_has_real_geometry_and_is_dciodvfy_clean(tmp_path) -> None:
    paths = write_series(tmp_path, slices=3, rows=32, transfer_syntax="jpeg-ls")
    ds = [dcmread(p) for p in paths]
    z = [float(d.ImagePositionPatient[2]) for d in ds]
    assert z[0] - z[1] == z[1] - z[2] == ds[0].SliceThickness
    hu = ds[1].pixel_array * float(ds[1].RescaleSlope) + float(ds[1].RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 500
    report = dciodvfy(paths[0])
    assert report.iod == "CTImage"
    assert report.errors == []
