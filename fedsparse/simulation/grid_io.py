"""Send a batch of messages and collect the replies, polling at a rate that suits the grid.

Flower's ``Grid.send_and_receive`` sleeps a fixed 0.1 s (in-memory grid, simulation) or 3 s
(deployed grid) between pulls, so every round ends on average half that interval after its
last reply. This is the same push-then-pull loop over the public ``push_messages`` /
``pull_messages`` API with shorter sleeps: a pull of the in-memory grid is a dict lookup
under a lock, one of the deployed grid a small local RPC.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedsparse.simulation.dispatch import notify_pushed, replies_signalled, wait_for_replies

#: seconds between pulls of an in-memory grid whose stored replies do not wake the driver
#: (Flower's own simulation runtime, as ``flwr run`` starts it)
IN_MEMORY_POLL = 0.01
#: seconds between pulls when stored replies wake the driver (fedsparse's simulation): only how
#: late a timeout or a stop request can be noticed
SIGNALLED_POLL = 0.25
#: seconds between pulls of a deployed SuperLink
REMOTE_POLL = 0.25


def poll_interval(grid: Grid) -> float:
    """How long to wait between pulls of ``grid``."""
    # Flower's in-memory grid module (its link state, ~1 s to import) is looked up, not imported:
    # importing it here would delay every run's start, and unloaded, no grid can be one
    in_memory = sys.modules.get("flwr.superlink.grid.inmemory_grid")
    if in_memory is None or not isinstance(grid, in_memory.InMemoryGrid):
        return REMOTE_POLL
    return SIGNALLED_POLL if replies_signalled() else IN_MEMORY_POLL


@dataclass(frozen=True)
class Stragglers:
    """When to stop waiting for a client that has not answered: once half the round's clients
    have, a message older than ``slack`` times the slowest answer so far (and at least
    ``floor`` seconds) is given up, instead of holding the round until its timeout. A client
    twice as slow as its peers is still waited for; one that hangs costs seconds, not minutes."""

    slack: float = 3.0
    floor: float = 10.0

    def limit(self, answered: list[float], total: int) -> float | None:
        """Seconds a message may wait now (None: keep waiting up to the timeout)."""
        if not answered or 2 * len(answered) < total:
            return None
        return max(self.floor, self.slack * max(answered))


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float,
                     interval: float | None = None, stop: Any = None,
                     window: int | None = None,
                     on_reply: Callable[[Message], None] | None = None,
                     stragglers: Stragglers | None = None) -> list[Message]:
    """Push ``messages``; return the replies that arrived within ``timeout`` seconds (or before
    ``stop``, anything with ``is_set()``, is set).

    ``window``: at most this many messages in flight; the next are pushed as replies arrive.
    Flower's simulation runtime scans every pending message for every node ten times a second,
    so a final evaluation of thousands of clients pushed at once stalls the driver.
    ``on_reply``: called with each reply as it arrives, so per-reply work the caller would do
    after the round (the server counts upload bytes) overlaps the clients still training.
    ``stragglers``: give up clients far slower than the others before ``timeout`` (the caller
    counts them as failed, as it counts those the timeout gives up).
    Between pulls it waits for the simulation to store a reply (``dispatch``), at most
    ``interval``: a deployed grid's replies are found by the pull alone.
    """
    pending = list(messages)
    total = len(pending)
    window = len(pending) if window is None else max(1, window)
    sent_at: dict[str, float] = {}
    answered: list[float] = []
    interval = poll_interval(grid) if interval is None else interval
    deadline = time.monotonic() + timeout
    waiting: set[str] = set()
    replies: list[Message] = []
    while pending or waiting:
        if pending and len(waiting) < window:
            batch, pending = pending[:window - len(waiting)], pending[window - len(waiting):]
            pushed = list(grid.push_messages(batch))
            now = time.monotonic()
            sent_at.update({message_id: now for message_id in pushed})
            waiting.update(pushed)
            notify_pushed()
        pulled = list(grid.pull_messages(waiting)) if waiting else []
        replies.extend(pulled)
        if on_reply is not None:
            for reply in pulled:
                on_reply(reply)
        now = time.monotonic()
        for reply in pulled:
            answered.append(now - sent_at.get(reply.metadata.reply_to_message_id, now))
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        limit = stragglers.limit(answered, total) if stragglers is not None else None
        if limit is not None:
            waiting.difference_update([m for m in waiting if now - sent_at[m] > limit])
        if now >= deadline or (stop is not None and stop.is_set()):
            break
        if not waiting and not pending:
            break
        if pulled and pending:
            continue  # room in the window: push the next at once
        if waiting:
            wait_for_replies(interval)
    return replies
