"""Real deployments: the Flower App (``flwr run .``), its run config, and Docker compose files."""
