from fedsparse.threads import map_on_cores


def test_results_keep_the_order_of_the_items():
    def square(x: int) -> int:
        return x * x

    assert map_on_cores(square, list(range(50))) == [x * x for x in range(50)]
    assert map_on_cores(square, [3]) == [9] and map_on_cores(square, []) == []
