"""The pooled dataset every client's partition indexes into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DataPool:
    """All samples of one dataset, kept compact (images stay uint8 until a client needs them).

    ``groups`` holds the natural owner of each sample (LEAF writer, synthetic device) when the
    dataset has one; the ``natural`` partitioner uses it.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def tensors(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float inputs and int64 labels for the given sample indices.

        Images come channels-last (NHWC in memory), whatever the strides of the array they were
        read from, so every conv network trains on CPU's faster channels-last kernels: on
        cnn-bn, max-pooling and BatchNorm took 3-9x longer on the NCHW layout a memory-mapped
        pool gave, and a local epoch 1.4x longer.
        """
        raw = torch.from_numpy(np.ascontiguousarray(self.x[indices]))
        if raw.dim() == 4:  # one copy into a fresh float NHWC buffer: with one channel,
            # ``contiguous()`` would keep NCHW strides (channels-last by the letter), which
            # conv2d then treats as NCHW
            n, c, h, w = raw.shape
            x = torch.empty((n, h, w, c)).copy_(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            x = raw.float()
        if self.x.dtype == np.uint8:
            x = x.div_(255.0)
        x = x.sub_(self.mean).div_(self.std)
        y = torch.from_numpy(np.ascontiguousarray(self.y[indices])).long()
        return x, y
