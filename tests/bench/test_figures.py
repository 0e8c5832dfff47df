from fedsparse.bench.figures import pareto_front


def test_pareto_front_keeps_what_no_other_point_beats_by_cost():
    points = [(1.0, 0.80), (0.5, 0.78), (0.3, 0.70), (0.6, 0.75), (1.2, 0.80), (0.3, 0.69)]
    # (0.6, 0.75) is beaten by (0.5, 0.78); (1.2, 0.80) by (1.0, 0.80); (0.3, 0.69) by (0.3, 0.70)
    assert pareto_front(points) == [2, 1, 0]


def test_pareto_front_of_one_point():
    assert pareto_front([(1.0, 0.5)]) == [0]
