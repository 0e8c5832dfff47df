"""FedRolex: rolling sub-model extraction.

In round t a client of width ratio r holds the window {(s + i) mod C : i < ceil(rC)} of every
layer's channels, s = (t - 1) * step, so over the rounds every channel is trained by the small
clients too (HeteroFL's small clients only ever train the first channels). Otherwise as HeteroFL:
trained sliced, averaged per coordinate over the clients holding it, with the scaler.
"""

from __future__ import annotations

from pydantic import Field

from fedsparse.clients.width import ScaledWidthOptions, WidthMethod
from fedsparse.structured import Keep


class FedRolexOptions(ScaledWidthOptions):
    """FedRolex's options (config section ``method.fedrolex``)."""

    step: int = Field(1, ge=1, description="channels the window moves per round")


class FedRolex(WidthMethod):
    """FedRolex: a window of channels that rolls one step per round, trained sliced."""

    name = "fedrolex"
    Options = FedRolexOptions
    which_channels = "the round's window of channels"

    def keep(self, ratio: float, server_round: int) -> Keep:
        assert self._graph is not None
        return self._graph.rolling(ratio, (server_round - 1) * self.options.step)
