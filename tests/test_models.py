import math

import pytest
import torch
from torch import nn

from helpers import compose_config
from mnist_lab.models import build_model
from mnist_lab.models import CNN, FFNN, count_parameters


@pytest.mark.parametrize("model, params", [("ffnn", 535_818), ("cnn", 942_026)])
def test_reference_models_have_the_notebooks_parameter_counts(model, params):
    net = build_model(compose_config([f"model={model}"]))
    assert count_parameters(net) == params
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_dropout_sits_where_the_notebook_puts_it():
    ffnn, cnn = FFNN(dropout=0.2), CNN(dropout=0.2)
    kinds = [type(m).__name__ for m in cnn]
    # after the flatten, then after each hidden Linear+ReLU
    assert kinds[kinds.index("Flatten") + 1] == "Dropout"
    assert sum(isinstance(m, nn.Dropout) for m in cnn) == 3
    assert sum(isinstance(m, nn.Dropout) for m in ffnn) == 2
    assert all(m.p == 0.2 for m in cnn if isinstance(m, nn.Dropout))
    none = build_model(compose_config(["model=cnn", "dropout=none"]))
    assert not any(isinstance(m, nn.Dropout) for m in none.modules())


def test_sizes_come_from_the_config():
    wide = build_model(compose_config(["model=cnn", "model.channels=[8,16,32]",
                                       "model.hidden=[128]"]))
    convs = [m for m in wide if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    linears = [m for m in wide if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 32 * 3 * 3 and linears[0].out_features == 128
    assert wide(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    deep = build_model(compose_config(["model.hidden=[300,200,100]"]))
    assert [m.out_features for m in deep if isinstance(m, nn.Linear)] == [300, 200, 100, 10]


def test_normal_init_matches_the_notebook_rule():
    torch.manual_seed(0)
    net = build_model(compose_config(["model=cnn", "init=normal"]))
    for layer in (m for m in net if isinstance(m, nn.Linear)):
        assert torch.count_nonzero(layer.bias) == 0
        expected = 1 / math.sqrt(layer.in_features)
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert abs(layer.weight.mean().item()) < 0.1 * expected


def test_init_schemes_differ_and_leave_convs_at_default():
    def first_layers(init):
        torch.manual_seed(0)
        net = build_model(compose_config(["model=cnn", f"init={init}"]))
        return net[0].weight.detach().clone(), [m for m in net if isinstance(m, nn.Linear)][0]

    conv_default, fc_default = first_layers("default")
    stds = {}
    for init in ("normal", "xavier", "kaiming"):
        conv, fc = first_layers(init)
        assert torch.equal(conv, conv_default), init  # conv layers untouched by every scheme
        assert torch.count_nonzero(fc.bias) == 0
        stds[init] = fc.weight.std().item()
    assert torch.count_nonzero(fc_default.bias) > 0  # PyTorch's own init draws biases
    fan_in, fan_out = 1568, 512
    assert stds["kaiming"] == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert stds["xavier"] == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    assert stds["normal"] == pytest.approx(1 / math.sqrt(fan_in), rel=0.05)
