import torch
from flwr.app import RecordDict

from fedsparse.clients import DenseClient, FedAvgFTClient
from fedsparse.config import load_config
from fedsparse.models import build_model

from .test_pfedgate import make_data


def test_fine_tuning_personalises_a_copy_and_leaves_the_global_model():
    cfg = load_config(None, ["method.name=fedavg-ft", "model.hidden=[16]", "train.lr=0.1",
                             "method.finetune_epochs=3"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (12,), 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_data(0, n=300)
    plain = DenseClient(cfg).evaluate(model, None, data, torch.Generator(), {}, RecordDict())
    tuned = FedAvgFTClient(cfg).evaluate(model, None, data, torch.Generator().manual_seed(0), {},
                                         RecordDict())
    assert tuned["accuracy"] > plain["accuracy"] + 0.2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
