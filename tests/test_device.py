"""Where clients train (``fedsparse.device``), and the emulated CUDA device the method tests use
to find device mix-ups without a GPU (``tests/fake_cuda.py``): it must refuse what CUDA refuses."""

import numpy as np
import pytest
import torch
from torch import nn

from fedsparse.device import CPU, gpu_request_problem, place_model
from tests.fake_cuda import CUDA, DeviceMixup, FakeCuda


def test_requests_ray_could_never_place_are_named():
    assert gpu_request_problem(0.0, 0) is None and gpu_request_problem(0.25, 1) is None
    assert "sees no CUDA device" in gpu_request_problem(0.5, 0)
    assert "whole GPUs" in gpu_request_problem(1.5, 4)
    assert "more GPUs than the 1" in gpu_request_problem(2, 1)


def test_placing_on_the_cpu_copies_nothing():
    model, masks = nn.Linear(3, 2), {"weight": torch.ones(2, 3, dtype=torch.bool)}
    placed, placed_masks = place_model(model, masks, CPU)
    assert placed is model and placed_masks is masks


def test_the_emulated_device_refuses_what_cuda_refuses():
    with FakeCuda() as mode:
        model, masks = place_model(nn.Linear(3, 2), {"weight": torch.ones(2, 3)}, CUDA)
        assert model.weight.device == CUDA and masks["weight"].is_cuda
        x = torch.randn(4, 3)
        with pytest.raises(DeviceMixup):
            model(x)  # host input, device weights
        y = model(x.to(CUDA))
        assert y.device == CUDA
        y.sum().backward()
        model.weight.grad.mul_(masks["weight"])  # autograd's gradient lives with its weight
        with pytest.raises(DeviceMixup):
            model.weight.grad.mul_(torch.ones(2, 3))  # a host mask
        model.weight.data.mul_(torch.tensor(0.5))  # a 0-d host tensor is a scalar
        assert y[torch.tensor([0, 1])].device == CUDA  # host indices are allowed
        with pytest.raises(DeviceMixup):
            y.detach().numpy()
        assert isinstance(y.detach().cpu().numpy(), np.ndarray)
        assert torch.zeros(3, device=model.weight.device).is_cuda
        with pytest.raises(DeviceMixup):
            torch.rand(3, device=CUDA, generator=torch.Generator())
        with pytest.raises(DeviceMixup):
            torch.cat([y, torch.zeros(4, 2)])
        assert torch.ones(2).to(y).is_cuda
        model.to("cpu")
        assert model.weight.device == CPU
        model(x)  # back on the host, host inputs are fine
    assert len(mode.mixups) == 5


def test_ray_is_asked_for_the_gpus_a_client_holds(monkeypatch, tmp_path):
    from fedsparse.config import load_config
    from fedsparse.simulation import runner

    monkeypatch.setattr(runner, "visible_gpus", lambda: 2)
    on_gpus = runner.backend_config(load_config(None, ["simulation.gpus_per_client=0.25"]), tmp_path)
    assert on_gpus["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert on_gpus["init_args"]["num_gpus"] == 2
    on_cpus = runner.backend_config(load_config(None, []), tmp_path)
    assert on_cpus["client_resources"]["num_gpus"] == 0 and on_cpus["init_args"]["num_gpus"] == 0


def test_a_client_trains_on_cuda_only_when_the_run_asked_and_one_is_there(monkeypatch):
    from fedsparse import device

    assert device.client_device(False) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.client_device(True) == torch.device("cuda") and device.client_device(False) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.client_device(True) == CPU
