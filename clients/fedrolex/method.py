"""FedRolex: rolling sub-model extraction.

In round t a client of width ratio r holds the window {(s + i) mod C : i < ceil(rC)} of every
layer's channels, s = (t - 1) * step, so over the rounds every channel is trained by the small
clients too (HeteroFL's small clients only ever train the first channels). The authors' step is
one channel per round (``torch.roll`` by the round number), so a run of T rounds moves the window
over T channels of a C-channel layer; ``step: cover`` moves it ceil(C / T) per round, so short runs
cover every channel. Otherwise as HeteroFL (the authors keep its static BN, scaler and label
split): trained sliced, averaged per coordinate over the clients holding it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from fedsparse.clients.width import ScaledWidthOptions, WidthMethod
from fedsparse.structured import Keep


class FedRolexOptions(ScaledWidthOptions):
    """FedRolex's options (config section ``method.fedrolex``)."""

    step: Annotated[int, Field(ge=1)] | Literal["cover"] = Field(
        1, description="channels the window moves per round (the authors: 1), or 'cover': "
                       "ceil(C / rounds) per layer, so the run's windows cover every channel")


class FedRolex(WidthMethod):
    """FedRolex: a window of channels that rolls one step per round, trained sliced."""

    name = "fedrolex"
    Options = FedRolexOptions
    which_channels = "the round's window of channels"

    def keep(self, ratio: float, server_round: int) -> Keep:
        assert self._graph is not None
        step = self.options.step
        if step == "cover":
            rounds = max(self.run.rounds, 1)
            return self._graph.rolling(ratio, {
                name: (server_round - 1) * math.ceil(space.size / rounds)
                for name, space in self._graph.spaces.items()})
        return self._graph.rolling(ratio, (server_round - 1) * step)
