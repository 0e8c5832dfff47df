import threading
import time
from types import SimpleNamespace

from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedsparse.simulation import dispatch
from fedsparse.simulation.grid_io import (
    IN_MEMORY_POLL,
    REMOTE_POLL,
    SIGNALLED_POLL,
    poll_interval,
    send_and_receive,
)


class SlowGrid:
    """Message ``k``'s reply shows up at the ``k``-th pull; message ids are ``m0``, ``m1``, ..."""

    def __init__(self, never: set[int] = frozenset()) -> None:
        self.pulls = 0
        self.never = never

    def push_messages(self, messages):
        self.ids = [f"m{k}" for k, _ in enumerate(messages)]
        return list(self.ids)

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [f"m{k}" for k in range(len(self.ids)) if k < self.pulls and k not in self.never]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in ready if i in set(message_ids)]


def test_collects_every_reply_once_as_they_arrive():
    grid = SlowGrid()
    replies = send_and_receive(grid, ["a", "b", "c", "d"], timeout=5.0, interval=0.001)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2", "m3"]
    assert grid.pulls == 4


def test_returns_what_arrived_when_the_timeout_passes():
    grid = SlowGrid(never={1})
    replies = send_and_receive(grid, ["a", "b", "c"], timeout=0.05, interval=0.005)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m2"]


def test_polls_the_simulation_grid_faster_than_a_remote_one(monkeypatch):
    in_memory = InMemoryGrid.__new__(InMemoryGrid)
    monkeypatch.setattr(dispatch, "_installed", threading.Event())
    assert poll_interval(in_memory) == IN_MEMORY_POLL < 0.1  # Flower's runtime: nothing wakes it
    assert poll_interval(SlowGrid()) == REMOTE_POLL < 3
    dispatch._installed.set()  # fedsparse's simulation: stored replies wake the pull loop
    assert poll_interval(in_memory) == SIGNALLED_POLL


def test_a_stored_reply_ends_the_wait_between_pulls(monkeypatch):
    """With replies signalled, a long interval costs no latency: the reply wakes the loop."""
    monkeypatch.setattr(dispatch, "_replied", threading.Event())
    grid = SlowGrid()
    threading.Timer(0.2, dispatch._replied.set).start()
    started = time.monotonic()
    replies = send_and_receive(grid, ["a", "b"], timeout=60.0, interval=30.0)
    assert len(replies) == 2 and time.monotonic() - started < 10


class CountingGrid:
    """Replies to each message one pull after it was pushed; records the most in flight."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.most = 0
        self.pushed = 0

    def push_messages(self, messages):
        ids = []
        for _ in messages:
            ids.append(f"m{self.pushed}")
            self.pushed += 1
        self.in_flight.update(ids)
        self.most = max(self.most, len(self.in_flight))
        return ids

    def pull_messages(self, message_ids):
        ready = [i for i in message_ids if i in self.in_flight]
        self.in_flight.difference_update(ready)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_a_window_bounds_the_messages_in_flight_and_still_sends_them_all():
    grid = CountingGrid()
    replies = send_and_receive(grid, list(range(25)), timeout=5.0, interval=0.001, window=4)
    assert len({r.metadata.reply_to_message_id for r in replies}) == 25
    assert grid.most == 4


def test_without_a_window_every_message_is_pushed_at_once():
    grid = CountingGrid()
    send_and_receive(grid, list(range(25)), timeout=5.0, interval=0.001)
    assert grid.most == 25


class TimedGrid:
    """Message ``k`` answers ``latency[k]`` seconds after it was pushed (None: never)."""

    def __init__(self, latency: list[float | None]) -> None:
        self.latency = latency
        self.pushed: dict[str, float] = {}

    def push_messages(self, messages):
        ids = []
        for message in messages:
            ids.append(f"m{message}")
            self.pushed[ids[-1]] = time.monotonic()
        return ids

    def pull_messages(self, message_ids):
        now = time.monotonic()
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in message_ids
                if self.latency[int(i[1:])] is not None
                and now - self.pushed[i] >= self.latency[int(i[1:])]]


def test_a_hung_client_is_given_up_while_a_slow_honest_one_is_waited_for():
    from fedsparse.simulation.grid_io import Stragglers

    # peers answer in 0.1 s, one honest client in 0.2 s (2x), one never
    grid = TimedGrid([0.1, 0.1, 0.1, 0.2, None])
    started = time.monotonic()
    replies = send_and_receive(grid, list(range(5)), timeout=30.0, interval=0.005,
                               stragglers=Stragglers(slack=3.0, floor=0.5))
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2", "m3"]
    assert 0.5 <= took < 5  # given up after max(floor, 3 x 0.2 s), not the 30 s timeout
    # a straggler that answers within slack x the slowest is kept, and nobody is given up
    # before half the clients answered
    grid = TimedGrid([0.05, 0.3, 0.3, 0.3])
    replies = send_and_receive(grid, list(range(4)), timeout=30.0, interval=0.005,
                               stragglers=Stragglers(slack=3.0, floor=0.01))
    assert len(replies) == 4
    assert Stragglers(3.0, 1.0).limit([0.2], total=5) is None  # fewer than half answered
    assert Stragglers(3.0, 1.0).limit([0.2, 0.5, 0.1], total=5) == 1.5
