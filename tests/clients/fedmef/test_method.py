"""FedMef's client: extrusion moves the weights the adjustment will prune towards zero and keeps
the budget; its costs count the activations pruned; its first mask needs no ABNS."""

import numpy as np
import pytest
import torch

from fedsparse.clients.fedmef.extrusion import extrusion_penalty, extrusion_targets
from fedsparse.clients.fedmef.method import activation_ratio
from fedsparse.clients.fedtiny.method import PAIRS, decode_pairs
from fedsparse.clients.shared_mask.pruning import magnitude_masks
from fedsparse.masks import prunable_weights
from fedsparse.models import cnn_bn
from tests.clients.helpers import make_data, make_method, make_task


def test_targets_are_the_k_smallest_kept_weights():
    w = torch.tensor([[0.5, -0.1, 3.0], [0.05, -2.0, 0.2]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    targets = extrusion_targets({"w": w}, {"w": mask}, {"w": 2})
    assert sorted(targets["w"].tolist()) == [1, 5]  # -0.1 and 0.2; 0.05 is already pruned
    penalty = extrusion_penalty({"w": w}, targets, 2.0)
    assert float(penalty()) == pytest.approx(2.0 * (0.1 ** 2 + 0.2 ** 2) ** 0.5)
    assert extrusion_penalty({"w": w}, targets, 0.0) is None


def _fit(extrusion: float):
    method, model = make_method("fedmef", "model.hidden=[16,32]", "train.batch_size=16",
                                f"method.pruning.extrusion={extrusion}", "train.local_epochs=2")
    params = dict(model.named_parameters())
    names = prunable_weights(params, keep_first_conv=True)
    masks = magnitude_masks({n: params[n].detach() for n in names}, 0.5)
    plan = {names[1]: 40}
    before = extrusion_targets(params, masks, plan)
    task = make_task(model, make_data(n=96), masks=masks, seed=3,
                     **{"adjust-layers": list(plan), "adjust-k": list(plan.values())})
    result = method.fit(task)
    return method, model, masks, names[1], before[names[1]], result


def test_extrusion_drives_the_weights_to_prune_towards_zero_and_keeps_the_budget():
    _, plain, _, name, idx, _ = _fit(0.0)
    _, extruded, masks, _, idx_e, result = _fit(1.0)
    assert torch.equal(idx, idx_e)  # same start, same targets
    low_plain = dict(plain.named_parameters())[name].detach().reshape(-1)[idx].norm()
    low_extruded = dict(extruded.named_parameters())[name].detach().reshape(-1)[idx].norm()
    assert low_extruded < 0.5 * low_plain
    # the budget holds: every trained weight stays inside the mask it was sent
    for layer, mask in masks.items():
        weight = dict(extruded.named_parameters())[layer].detach()
        assert not weight[~mask].any()
    assert result.upload is masks
    index, values = decode_pairs(result.outbox[PAIRS])[name]  # FedTiny's pairs still go up
    assert len(index) == 40 and np.all(np.isfinite(values))


def test_activation_ratio_is_measured_and_below_one_for_cnn_bn():
    model = cnn_bn((1, 28, 28), 10)
    ratio = activation_ratio(model, (1, 28, 28), 0.5, seed=0)
    assert 0.9 < ratio < 1.0  # conv2's and fc1's inputs are a small share of what is saved
    assert activation_ratio(model, (1, 28, 28), 1.0, seed=0) == 1.0
    assert activation_ratio(model, (1, 28, 28), 0.1, seed=0) < ratio
