"""FedTiny and FedDST clients: top-K pair uploads and local prune-and-grow."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedsparse.clients import FedDSTClient, FedTinyClient
from fedsparse.clients.dense import Exchange, LocalData
from fedsparse.config import load_config
from fedsparse.fedtiny import prunable_weights
from fedsparse.models import build_model
from fedsparse.pruning import magnitude_masks
from fedsparse.pruning_wire import ADJUST_MASK_RECORD, PAIRS_RECORD, decode_pairs


def make_data(n: int = 64) -> LocalData:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 12, generator=g) + torch.nn.functional.one_hot(y, 12).float() * 3
    return LocalData(x, y, x[:0], y[:0], x[:16], y[:16])


def setup(method: str):
    cfg = load_config(None, [f"method.name={method}", "model.hidden=[16,32]", "train.batch_size=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (12,), 4)
    params = dict(model.named_parameters())
    masks = magnitude_masks({n: params[n].detach() for n in prunable_weights(model)}, 0.3)
    return cfg, model, masks


def test_fedtiny_client_uploads_at_most_k_pairs_at_pruned_positions():
    cfg, model, masks = setup("fedtiny")
    names = prunable_weights(model)
    plan = {"adjust-layers": names, "adjust-k": [5, 3, 2], "partition-id": 0, "server-round": 5}
    exchange = Exchange(inbox=RecordDict())
    metrics, upload = FedTinyClient(cfg).fit(model, masks, make_data(), torch.Generator().manual_seed(1),
                                             plan, RecordDict(), exchange)
    assert upload is masks and metrics["samples-seen"] > 0
    pairs = decode_pairs(exchange.outbox[PAIRS_RECORD])
    assert set(pairs) == set(names)
    for name, k in zip(names, [5, 3, 2], strict=True):
        index, values = pairs[name]
        assert len(index) == k and np.all(np.isfinite(values))
        assert not masks[name].flatten()[torch.from_numpy(index)].any()
    plain = Exchange(inbox=RecordDict())
    FedTinyClient(cfg).fit(model, masks, make_data(), torch.Generator(), {"partition-id": 0},
                           RecordDict(), plain)
    assert PAIRS_RECORD not in plain.outbox.array_records


def test_fedtiny_client_uses_the_top_mask_when_sent():
    cfg, model, masks = setup("fedtiny")
    name = prunable_weights(model)[-1]
    top = torch.zeros_like(masks[name])
    top.view(-1)[:-4] = True  # only the last 4 positions are pruned in the top tier's mask
    inbox = RecordDict({ADJUST_MASK_RECORD: ArrayRecord(
        array_dict={name: Array(np.packbits(top.numpy().ravel()))})})
    exchange = Exchange(inbox=inbox)
    FedTinyClient(cfg).fit(model, masks, make_data(), torch.Generator(),
                           {"adjust-layers": [name], "adjust-k": [10], "partition-id": 0},
                           RecordDict(), exchange)
    index, _ = decode_pairs(exchange.outbox[PAIRS_RECORD])[name]
    assert sorted(index) == list(range(top.numel() - 4, top.numel()))


def test_feddst_client_changes_its_mask_but_not_its_counts():
    cfg, model, masks = setup("feddst")
    names = prunable_weights(model)
    _, upload = FedDSTClient(cfg).fit(model, dict(masks), make_data(), torch.Generator().manual_seed(2),
                                      {"adjust-layers": names, "adjust-k": [4, 2, 1], "partition-id": 0},
                                      RecordDict(), Exchange(inbox=RecordDict()))
    params = dict(model.named_parameters())
    for name, k in zip(names, [4, 2, 1], strict=True):
        assert int(upload[name].sum()) == int(masks[name].sum())
        assert int((upload[name] & ~masks[name]).sum()) == k
        assert torch.all(params[name][~upload[name]] == 0)
