"""What the personalisation baselines share: a personal model kept in the client's private state."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsparse.method import ClientState

PERSONAL_KEY = "personal-model"


def load_personal(model: nn.Module, state: ClientState) -> bool:
    """Load the client's personal model into ``model``; False when it has none yet."""
    if PERSONAL_KEY not in state:
        return False
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state[PERSONAL_KEY].items()})
    return True


def keep_personal(model: nn.Module, state: ClientState) -> None:
    state[PERSONAL_KEY] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
