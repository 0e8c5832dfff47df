"""fedsparse: federated learning simulation for sparse, budget-constrained clients."""

__version__ = "0.1.0"
