"""Flower glue: the ServerApp round loop, the ClientApp and the Ray-backed runner."""
