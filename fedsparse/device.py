"""Where a client trains: a CUDA device when its worker was given one, else the CPU.

Methods never choose a device: the ClientApp places the task (model, masks, data) on the
device before ``Method.fit`` / ``evaluate`` / ``answer`` and brings the model back to the CPU
before encoding the reply, so a method only has to create its own tensors where the tensors it
was handed live (``p.device``, ``task.device``). A simulated client trains on CUDA when the run
gives clients GPUs (``simulation.gpus_per_client``: Ray then makes one visible to its worker);
a deployed node trains on its own GPU when it has one.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsparse.masks import Masks

CPU = torch.device("cpu")


def client_device(wants_gpu: bool) -> torch.device:
    """The device this worker trains on: CUDA when the run asked for it and one is visible."""
    return torch.device("cuda") if wants_gpu and torch.cuda.is_available() else CPU


def place_model(model: nn.Module, masks: Masks | None, device: torch.device
                ) -> tuple[nn.Module, Masks | None]:
    """The model and its masks on ``device`` (no copy on the CPU)."""
    if device == CPU:
        return model, masks
    return model.to(device), masks_on(masks, device)


def masks_on(masks: Masks | None, device: torch.device) -> Masks | None:
    """The masks on ``device`` (the same tensors where they already are)."""
    return None if masks is None else {n: m.to(device) for n, m in masks.items()}


def visible_gpus() -> int:
    """CUDA devices PyTorch sees on this machine (0 with a CPU build of torch)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_request_problem(gpus_per_client: float, visible: int) -> str | None:
    """Why Ray could never place a client asking for ``gpus_per_client`` GPUs here (it would
    wait forever), or None."""
    if gpus_per_client <= 0:
        return None
    if visible == 0:
        return (f"--gpus-per-client {gpus_per_client:g} asks for GPUs, but PyTorch sees no CUDA "
                f"device on this machine (torch {torch.__version__}): drop --gpus-per-client to "
                "train on the CPU")
    if gpus_per_client > 1 and not float(gpus_per_client).is_integer():
        return (f"--gpus-per-client {gpus_per_client:g}: above 1, Ray places whole GPUs only; "
                "use a fraction (clients share a GPU) or a whole number")
    if gpus_per_client > visible:
        return (f"--gpus-per-client {gpus_per_client:g} asks for more GPUs than the {visible} "
                "this machine has: no client could ever start")
    return None
