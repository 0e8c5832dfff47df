"""HeteroFL: every client trains the first channels of every layer, as many as its budget allows.

Nested submodels (a narrower client's channels are a prefix of a wider one's), trained sliced,
averaged per coordinate over the clients holding it; the scaler divides hidden outputs by the
width ratio. Widths come from the declared densities (the paper's fixed levels 1, 1/2, 1/4, ...
are densities 1, ~1/4, ~1/16).
"""

from __future__ import annotations

from fedsparse.clients.width import WidthMethod


class HeteroFL(WidthMethod):
    """HeteroFL: nested width submodels (the first channels of every layer), trained sliced."""

    name = "heterofl"
