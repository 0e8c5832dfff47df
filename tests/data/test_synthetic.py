import numpy as np

from fedsparse.config import SyntheticConfig
from fedsparse.data.synthetic import generate_synthetic


def test_shapes_sizes_and_owners():
    cfg = SyntheticConfig(min_samples=50, max_samples=300)
    pool = generate_synthetic(cfg, num_devices=20, seed=1)
    assert pool.x.shape[1:] == (60,) and pool.x.dtype == np.float32
    counts = np.bincount(pool.groups)
    assert len(counts) == 20 and counts.min() >= 50 and counts.max() <= 300
    assert pool.y.min() >= 0 and pool.y.max() < 10


def test_deterministic_per_seed():
    cfg = SyntheticConfig()
    a, b = generate_synthetic(cfg, 10, seed=4), generate_synthetic(cfg, 10, seed=4)
    c = generate_synthetic(cfg, 10, seed=5)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.y[:50], c.y[:50])


def _label_divergence(pool) -> float:
    """Mean total-variation distance between each device's label distribution and the pool's."""
    overall = np.bincount(pool.y, minlength=10) / len(pool.y)
    tv = []
    for g in np.unique(pool.groups):
        local = np.bincount(pool.y[pool.groups == g], minlength=10) / np.sum(pool.groups == g)
        tv.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(tv))


def test_alpha_beta_make_devices_differ_and_iid_does_not():
    hetero = generate_synthetic(SyntheticConfig(alpha=1.0, beta=1.0), 30, seed=0)
    iid = generate_synthetic(SyntheticConfig(iid=True), 30, seed=0)
    assert _label_divergence(hetero) > 2 * _label_divergence(iid)
