import torch

from fedsparse.clients.dense import Dense
from fedsparse.clients.fedavg_ft import FedAvgFT
from tests.clients.helpers import make_data, make_method, make_task


def test_fine_tuning_personalises_a_copy_and_leaves_the_global_model():
    method, model = make_method("fedavg-ft", "model.hidden=[16]", "train.lr=0.1",
                                "method.fedavg-ft.finetune_epochs=3")
    assert isinstance(method, FedAvgFT) and method.options.finetune_epochs == 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = make_data(0, n=300)
    plain = Dense(method.options, method.run).evaluate(make_task(model, data))
    tuned = method.evaluate(make_task(model, data))
    assert tuned["accuracy"] > plain["accuracy"] + 0.2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
