import pytest
import torch

from fedsparse.config import ModelConfig
from fedsparse.errors import ConfigError
from fedsparse.models import build_model

IMAGE_CASES = [((1, 28, 28), 10), ((3, 32, 32), 100), ((1, 28, 28), 62)]


@pytest.mark.parametrize("name", ["leaf-cnn", "lenet", "cnn-bn", "resnet18", "vgg11-bn", "mlp", "logreg"])
@pytest.mark.parametrize(("shape", "classes"), IMAGE_CASES)
def test_forward_shape(name, shape, classes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), shape, classes)
    model.eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    assert torch.isfinite(out).all()


def test_vector_models_on_synthetic_inputs():
    model = build_model(ModelConfig(name="mlp", hidden=[16, 8]), (60,), 10)
    assert model(torch.randn(5, 60)).shape == (5, 10)
    sizes = [p.shape for p in model.parameters()]
    assert sizes[0] == (16, 60) and sizes[-1] == (10,)


def test_image_model_on_vectors_is_a_config_error():
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model(ModelConfig(name="lenet"), (60,), 10)


def test_same_seed_same_init():
    torch.manual_seed(3)
    a = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    torch.manual_seed(3)
    b = build_model(ModelConfig(name="cnn-bn"), (1, 28, 28), 10)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
