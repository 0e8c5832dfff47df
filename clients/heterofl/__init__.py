"""HeteroFL (Diao, Ding, Tarokh, ICLR 2021): ``--method heterofl``."""

from fedsparse.clients.heterofl.method import HeteroFL

__all__ = ["HeteroFL"]
