import pytest
import torch

from ai.device import choose_device, to_device


@pytest.mark.parametrize(("cuda", "expected"), [(False, "cpu"), (True, "cuda:0")])
def test_auto_picks_the_first_gpu_if_there_is_one_else_the_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool,
                                                               expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert choose_device("auto") == torch.device(expected)


def test_asking_for_cuda_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:1' was asked for but CUDA is not available"):
        choose_device("cuda:1")
    assert choose_device("cpu") == torch.device("cpu")


def test_asking_for_a_gpu_that_exists_gives_that_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("cuda:1") == torch.device("cuda", 1)


def test_to_device_on_the_cpu_keeps_values_and_dtype() -> None:
    t = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    moved = to_device(t, torch.device("cpu"))
    assert moved.device.type == "cpu" and moved.dtype == torch.int16
    assert torch.equal(moved, t)
