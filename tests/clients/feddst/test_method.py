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


def test_the_authors_timing_readjusts_after_local_training():
    """Before training (fedsparse's tuned default) the grown weights start at 0 and then train;
    after it (the authors) they are uploaded at 0, and the weights training moved are those of
    the mask the client was sent."""
    for readjust in ("before-training", "after-training"):
        method, model, masks, names = setup("feddst")
        if readjust == "after-training":
            method.options = method.options.model_copy(update={"readjust": readjust})
        task = make_task(model, make_data(n=64), masks=dict(masks), seed=2,
                         **{"adjust-layers": names, "adjust-k": [4, 2, 1]})
        upload = method.fit(task).upload
        params = dict(model.named_parameters())
        grown = upload[names[0]] & ~masks[names[0]]
        assert int(grown.sum()) == 4
        if readjust == "before-training":
            assert torch.all(params[names[0]][grown] != 0)
        else:
            assert torch.all(params[names[0]][grown] == 0)


def test_the_authors_preset_sets_feddsts_schedule_unless_an_option_is_given():
    from fedsparse.config import load_config
    from fedsparse.experiment import build_method

    cfg = load_config(None, ["method.name=feddst", "rounds=40", "method.pruning.preset=authors"])
    options = build_method(cfg).options
    assert (options.adjust_every, options.adjust_until, options.readjust) == (10, 20, "after-training")
    given = load_config(None, ["method.name=feddst", "rounds=40", "method.pruning.preset=authors",
                               "method.pruning.adjust_every=3"])
    assert build_method(given).options.adjust_every == 3
