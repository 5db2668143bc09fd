import pytest
import torch

from ai.device import choose_device, to_device


def test_auto_falls_back_to_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device("auto").type == expected


def test_asking_for_cuda_gives_cuda_or_a_clear_error() -> None:
    if torch.cuda.is_available():
        assert choose_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            choose_device("cuda")


def test_to_device_on_the_cpu_keeps_values_and_dtype() -> None:
    t = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    moved = to_device(t, torch.device("cpu"))
    assert moved.device.type == "cpu" and moved.dtype == torch.int16
    assert torch.equal(moved, t)
