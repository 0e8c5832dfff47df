import threading

from fedsparse.parallel import cores, thread_map


def test_thread_map_keeps_order_and_uses_threads_when_there_are_cores():
    names = set()

    def square(x: int) -> int:
        names.add(threading.current_thread().name)
        return x * x

    assert thread_map(square, range(50)) == [x * x for x in range(50)]
    assert thread_map(square, []) == []
    if cores() > 1:
        assert threading.main_thread().name not in names
