"""The deployed ClientApp (named in pyproject.toml's ``[tool.flwr.app.components]``).

Its own module, apart from the ServerApp: a SuperNode starts a Python process per ClientApp
message, and this import chain (no server loop, strategies, plots or Ray runner) starts about a
second faster than one that also loads the server. Each node reads the experiment from the run
config and its partition (and budget) from its ``--node-config``.
"""

from __future__ import annotations

from fedsparse.simulation.client_app import make_client_app

client_app = make_client_app(None, None)
