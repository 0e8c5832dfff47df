import threading
import time
from queue import Queue

import pytest

from fedsparse.simulation import dispatch


class Store:
    """The LinkState calls the dispatch loop makes: undelivered messages per node, ``limit`` at a
    time, each delivered once; and replies stored."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, str]] = []
        self.stored: list[str] = []
        self.lock = threading.Lock()

    def get_message_ins(self, node_id, limit):
        with self.lock:
            mine = [m for m in self.waiting if m[0] == node_id][:limit]
            for m in mine:
                self.waiting.remove(m)
        return [text for _, text in mine]

    def store_message_res(self, message):
        self.stored.append(message)


@pytest.fixture
def no_fallback_scan(monkeypatch):
    """Only a push can wake the loop within the test's patience."""
    monkeypatch.setattr(dispatch, "FALLBACK_SCAN", 120.0)


def _loop(target, *args):
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(*args, stop), daemon=True)
    thread.start()
    return stop, thread


def test_a_push_wakes_the_dispatch_loop_and_every_message_of_a_node_goes(no_fallback_scan):
    store, queue = Store(), Queue()
    stop, thread = _loop(dispatch.add_messages_on_push, store, queue, {1: 0, 2: 1})
    time.sleep(0.05)  # the loop has scanned an empty store and waits
    with store.lock:
        store.waiting += [(1, "a"), (1, "b"), (2, "c")]
    dispatch.notify_pushed()
    got = {queue.get(timeout=30) for _ in range(3)}  # 120 s if only the timer could wake it
    assert got == {"a", "b", "c"}
    stop.set()  # the engine's stop ends the wait too: it joins the loop when a run ends
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_stored_reply_wakes_the_driver(no_fallback_scan):
    store, queue = Store(), Queue()
    stop, thread = _loop(dispatch.put_replies_and_notify, store, queue)
    dispatch.wait_for_replies(0)  # nothing left over from elsewhere
    queue.put("reply")
    started = time.monotonic()
    dispatch.wait_for_replies(120.0)
    assert time.monotonic() - started < 60 and store.stored == ["reply"]
    stop.set()
    thread.join(timeout=30)


def test_installed_into_flowers_simulation_engine(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api

    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    monkeypatch.setattr(vce_api, "put_message_into_state", vce_api.put_message_into_state)
    dispatch.install()
    assert vce_api.add_messages_to_queue is dispatch.add_messages_on_push
    assert vce_api.put_message_into_state is dispatch.put_replies_and_notify
