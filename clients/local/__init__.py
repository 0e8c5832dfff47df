"""Local training without federation, the personalisation baseline (``--method local``)."""

from fedsparse.clients.local.method import LocalOnly

__all__ = ["LocalOnly"]
