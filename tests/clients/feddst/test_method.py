import torch

from tests.clients.fedtiny.test_method import setup
from tests.clients.helpers import make_data, make_task


def test_feddst_client_changes_its_mask_but_not_its_counts():
    method, model, masks, names = setup("feddst")
    task = make_task(model, make_data(n=64), masks=dict(masks), seed=2,
                     **{"adjust-layers": names, "adjust-k": [4, 2, 1]})
    upload = method.fit(task).upload
    params = dict(model.named_parameters())
    for name, k in zip(names, [4, 2, 1], strict=True):
        assert int(upload[name].sum()) == int(masks[name].sum())
        assert int((upload[name] & ~masks[name]).sum()) == k
        assert torch.all(params[name][~upload[name]] == 0)
