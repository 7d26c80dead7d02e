"""Each layer class carries what the package needs of it (core spec, saved config, PyTorch
twin, ONNX node, float64 reference), and the tools iterate over the layer types."""
import numpy as np
import pytest

import layerprop as lp
import reference
from layerprop import io as lpio
from layerprop import layers as L
from layerprop import reference as twin

EXAMPLES = {
    L.Linear: lambda: lp.Linear(3, 4, bias=False, name="a"),
    L.ReLU: lambda: lp.ReLU(name="r"),
    L.LeakyReLU: lambda: lp.LeakyReLU(0.2),
    L.Tanh: lambda: lp.Tanh(),
    L.Sigmoid: lambda: lp.Sigmoid(),
    L.GELU: lambda: lp.GELU(),
    L.SiLU: lambda: lp.SiLU(),
    L.ELU: lambda: lp.ELU(0.7),
    L.Softplus: lambda: lp.Softplus(beta=2.0, threshold=5.0),
    L.Identity: lambda: lp.Identity(),
    L.Dropout: lambda: lp.Dropout(0.3),
    L.BatchNorm1d: lambda: lp.BatchNorm1d(4, eps=1e-3, momentum=0.2, affine=False),
    L.LayerNorm: lambda: lp.LayerNorm(4, eps=1e-4),
}


def test_every_layer_type_is_known_once():
    assert set(L.LAYER_TYPES) == set(EXAMPLES) and len(L.LAYER_TYPES) == len(EXAMPLES)
    assert list(lpio.LAYER_SPECS)[:len(L.LAYER_TYPES)] == [c.__name__ for c in L.LAYER_TYPES]
    from layerprop.interop import SUPPORTED
    assert SUPPORTED == tuple(c.torch_name for c in L.LAYER_TYPES)


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_config_round_trip(cls):
    layer = EXAMPLES[cls]()
    config = layer.get_config()
    assert [k for k, _kind in cls.config_fields] == list(config)
    back = cls.from_config(config, layer.name)
    assert type(back) is cls and back.describe() == layer.describe() and back.get_config() == config


@pytest.mark.parametrize("cls", [c for c in EXAMPLES if not c.stored], ids=lambda c: c.__name__)
def test_elementwise_reference_derivative_matches_finite_differences(cls):
    layer = EXAMPLES[cls]()
    z = np.random.default_rng(0).standard_normal((5, 4)) * 2 + 0.01
    h = 1e-6
    fd = (layer.reference_forward(z + h, {}, False) - layer.reference_forward(z - h, {}, False)) / (2 * h)
    assert np.allclose(layer.reference_grad(z), fd, rtol=1e-6, atol=1e-8)
    assert layer.reference_forward(z, {}, False).dtype == np.float64


def test_explain_and_the_tests_share_one_twin():
    for name in ("sigmoid", "log_softmax", "cross_entropy", "mse", "bce_with_logits", "linear_forward"):
        assert getattr(reference, name) is getattr(twin, name)
    z = np.random.default_rng(1).standard_normal((4, 3))
    assert np.allclose(twin.softmax(z).sum(axis=1), 1.0)
    assert np.allclose(np.log(twin.softmax(z)), twin.log_softmax(z))
    assert np.array_equal(lp.GELU().reference_forward(z, {}, False), reference.activation("gelu", z))


@pytest.mark.parametrize("training", [True, False])
def test_norm_references_against_the_core(training):
    model = lp.Sequential(lp.Linear(3, 4), lp.BatchNorm1d(4), lp.LayerNorm(4), dtype="float64", seed=0)
    model.compile(loss="mse")
    X = np.random.default_rng(2).standard_normal((6, 3))
    model.buffers()["1.running_mean"][...] = 0.3
    model.buffers()["1.running_var"][...] = 2.0
    model.train() if training else model.eval()
    t = {**model.parameters(), **model.buffers()}

    def own(prefix):
        return {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith(prefix + ".")}
    h = model.layers[0].reference_forward(X, own("0"), training)
    h = model.layers[1].reference_forward(h, own("1"), training)
    h = model.layers[2].reference_forward(h, own("2"), training)
    if training:  # the core's training forward, through the loss's gradient
        loss, _ = model.loss_and_grads(X, np.zeros((6, 4)))
        assert np.isclose(loss, np.mean(h * h), rtol=1e-12)
    else:
        assert np.allclose(model.predict(X), h, rtol=1e-12, atol=1e-12)


def test_layer_outside_the_core_is_refused_by_name():
    class Custom(lp.Layer):
        pass
    with pytest.raises(TypeError, match="not supported by the core"):
        lp.Sequential(lp.Linear(2, 2), Custom())


def test_codes_have_one_home():
    from layerprop import _codes
    today = {"Identity": 0, "ReLU": 1, "LeakyReLU": 2, "Tanh": 3, "Sigmoid": 4, "GELU": 5}
    assert all(_codes.ACT[k] == v for k, v in today.items())  # the core may add members after these
    assert _codes.LOSS["Poisson"] == 3 and _codes.OPT["AdamW"] == 3 and _codes.NODE["Dropout"] == 5
    assert _codes.SCHEDULE["LayerwiseBottomUp"] == 2 and _codes.LAYER["LayerNorm"] == 2
    assert _codes.code("OptKind", "Adam") == lp.Adam().kind
    assert lp.Layerwise(order="bottom_up").code == _codes.code("ScheduleKind", "LayerwiseBottomUp")
    assert lp.LeakyReLU().act_code == _codes.ACT["LeakyReLU"]


def test_codes_follow_the_cores_enums(monkeypatch):
    """The core binds every enum; its numbering (and its new members) is what Python uses, and
    no code is declared anywhere else."""
    import enum
    from layerprop import _codes

    for table, enum_name in ((_codes.ACT, "Act"), (_codes.NODE, "NodeKind"), (_codes.LAYER, "LayerKind"),
                             (_codes.LOSS, "LossKind"), (_codes.OPT, "OptKind"), (_codes.SCHEDULE, "ScheduleKind")):
        members = getattr(_codes._core, enum_name).__members__
        assert table == {n: int(m.value) for n, m in members.items() if n != "Count"}
    assert {"SiLU", "ELU", "Softplus"} <= set(_codes.ACT) and {"RMSprop", "Adagrad"} <= set(_codes.OPT)

    class Act(enum.Enum):
        Identity = 0
        ReLU = 1
        Extra = 9
    monkeypatch.setattr(_codes._core, "Act", Act, raising=False)
    assert _codes._codes("Act") == {"Identity": 0, "ReLU": 1, "Extra": 9}
