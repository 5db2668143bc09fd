"""The CUDA paths: same results as on CPU. Skipped on machines without CUDA."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ai.bundle import BundleSegmenter
from ai.ct_basic import CtBasic
from ai.device import choose_device, to_device
from ai.measure import dice
from ai.volume import volume_from_datasets
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                                          "ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def volume():
    return volume_from_datasets(phantom_datasets(make_phantom(slices=40, rows=128, seed=3)))


def test_auto_device_picks_cuda() -> None:
    assert choose_device("auto").type == "cuda"


def test_ct_basic_on_cuda_equals_cpu(volume) -> None:
    assert np.array_equal(CtBasic("cuda").predict(volume), CtBasic("cpu").predict(volume))


def test_bundle_with_amp_on_cuda_matches_cpu(models_dir: Path, volume) -> None:
    gpu = BundleSegmenter(models_dir / "phantom-threshold", "cuda").predict(volume)
    cpu = BundleSegmenter(models_dir / "phantom-threshold", "cpu").predict(volume)
    for label in (1, 2, 3):
        assert dice(gpu == label, cpu == label) > 0.99
    torch.cuda.empty_cache()


def test_to_device_goes_through_pinned_memory_to_cuda() -> None:
    t = torch.randn(4, 64, 64)
    moved = to_device(t, torch.device("cuda"))
    assert moved.is_cuda
    assert torch.equal(moved.cpu(), t)
