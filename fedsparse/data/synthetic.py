"""FedProx's Synthetic(alpha, beta) federated benchmark, generated in memory.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), section 5.1:
device k draws its own softmax-regression model W_k, b_k ~ N(u_k, 1) with u_k ~ N(0, alpha)
and its own input mean v_k ~ N(B_k, 1) with B_k ~ N(0, beta); inputs x ~ N(v_k, Sigma) with
Sigma_jj = j^-1.2; labels y = argmax softmax(W_k x + b_k). Sample counts follow a power law
(lognormal(4, 2) + 50), clipped here to ``max_samples`` to keep simulations affordable.
"""

from __future__ import annotations

import numpy as np

from fedsparse.config import SyntheticConfig
from fedsparse.data.pool import DataPool


def generate_synthetic(cfg: SyntheticConfig, num_devices: int, seed: int) -> DataPool:
    """Generate ``num_devices`` devices' data; ``groups`` holds each sample's device."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4.0, 2.0, num_devices).astype(np.int64) + cfg.min_samples
    sizes = np.clip(sizes, cfg.min_samples, cfg.max_samples)
    std_x = np.power(np.arange(1, cfg.dim + 1, dtype=np.float64), -1.2 / 2)

    model_shift = rng.normal(0.0, np.sqrt(cfg.alpha), num_devices)
    input_shift = rng.normal(0.0, np.sqrt(cfg.beta), num_devices)
    shared_w = rng.normal(0.0, 1.0, (cfg.dim, cfg.num_classes))
    shared_b = rng.normal(0.0, 1.0, cfg.num_classes)

    xs, ys, owners = [], [], []
    for device, n in enumerate(sizes):
        if cfg.iid:
            w, b, mean_x = shared_w, shared_b, np.zeros(cfg.dim)
        else:
            w = rng.normal(model_shift[device], 1.0, (cfg.dim, cfg.num_classes))
            b = rng.normal(model_shift[device], 1.0, cfg.num_classes)
            mean_x = rng.normal(input_shift[device], 1.0, cfg.dim)
        x = mean_x + rng.normal(0.0, 1.0, (n, cfg.dim)) * std_x
        y = np.argmax(x @ w + b, axis=1)  # argmax of softmax == argmax of logits
        xs.append(x.astype(np.float32))
        ys.append(y.astype(np.int64))
        owners.append(np.full(n, device, dtype=np.int64))
    return DataPool(
        name="synthetic",
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        num_classes=cfg.num_classes,
        groups=np.concatenate(owners),
    )
