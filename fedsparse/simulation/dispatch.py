"""Hand messages between the driver and the simulation's workers when they arrive, not on a poll.

Flower's simulation engine moves messages from its LinkState to the workers' queue in a loop
(``vce_api.add_messages_to_queue``) that sleeps 0.1 s between scans of every node, so each
round's clients start half an interval after the push on average (a few percent of a short
round; ``benchmarks/overhead.py`` measures rounds). This loop does the same scan but also wakes
when fedsparse's grid pushes (``notify_pushed``), and rescans at once while a scan found
something (a node's second message waited a full interval before). The way back likewise: the
thread that stores replies (``vce_api.put_message_into_state``) also signals ``replied``, which
the driver's ``send_and_receive`` waits on between pulls instead of sleeping. Installed for the
simulation only; deployed SuperNodes and SuperLinks talk as Flower built them.

With both ways signalled, the time-driven scans are only a fallback, and rare: every scan
checks each node against every stored message, and every wake-up on a loaded two-core machine
preempts a training client.
"""

from __future__ import annotations

import threading
from queue import Empty, Queue
from typing import Any

#: seconds between scans when nothing wakes the loop (Flower's own interval is 0.1 s): every
#: push in a simulation wakes it, so this only bounds the wait for a push made some other way
FALLBACK_SCAN = 1.0

_pushed = threading.Event()
_replied = threading.Event()
_installed = threading.Event()


def replies_signalled() -> bool:
    """Whether stored replies wake ``wait_for_replies`` in this process (``install`` ran), so
    a pull loop needs no short interval of its own."""
    return _installed.is_set()


def notify_pushed() -> None:
    """Tell the dispatch loop that messages were pushed to the in-memory LinkState."""
    _pushed.set()


def wait_for_replies(timeout: float) -> None:
    """Return when the simulation stores a reply, or after ``timeout`` seconds."""
    if _replied.wait(timeout):
        _replied.clear()


def put_replies_and_notify(state: Any, queue: Queue, f_stop: threading.Event) -> None:
    """``vce_api.put_message_into_state`` that signals each stored reply."""
    while not f_stop.is_set():
        try:
            reply = queue.get(timeout=1.0)
        except Empty:
            continue
        state.store_message_res(reply)
        _replied.set()


def _wake_on_stop(f_stop: threading.Event) -> None:
    f_stop.wait()
    _pushed.set()


def add_messages_on_push(state: Any, queue: Queue, nodes_mapping: dict[int, int],
                         f_stop: threading.Event) -> None:
    """``vce_api.add_messages_to_queue`` with the wait ended by a push as well as by time."""
    # the engine joins this loop once the run stops: end its wait then, not a scan later
    threading.Thread(target=_wake_on_stop, args=(f_stop,), name="dispatch-stop", daemon=True).start()
    while not f_stop.is_set():
        found = False
        for node_id in nodes_mapping:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                found = True
        if found:
            continue  # a node may hold more than one message: take the next without waiting
        if _pushed.wait(FALLBACK_SCAN):
            _pushed.clear()


def install() -> None:
    """Make Flower's simulation engine (flwr 1.42, pinned) start these two loops for the runs
    that start from now on: ``run_api`` looks both functions up when it starts their threads."""
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = add_messages_on_push  # type: ignore[assignment]
    vce_api.put_message_into_state = put_replies_and_notify  # type: ignore[assignment]
    _installed.set()

