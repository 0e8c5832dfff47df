"""Datasets, partitioners and the per-client federation built from them."""

from fedsparse.data.federation import Federation, build_federation, cached_pool
from fedsparse.data.partition import ClientSplit
from fedsparse.data.pool import DataPool

__all__ = ["ClientSplit", "DataPool", "Federation", "build_federation", "cached_pool"]
