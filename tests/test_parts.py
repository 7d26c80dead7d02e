"""The core's parts on their own, without a Model: the Graph part (its checks and what it
derives), the ParamStore part's layout and the Workspace part's sizes."""
import numpy as np
import pytest

from layerprop import _core
from layerprop._codes import ACT, LAYER, NODE

LS, NS = _core.LayerSpec, _core.NodeSpec


def linear(i, o, bias=True):
    return LS(kind=LAYER["Linear"], in_features=i, out_features=o, bias=bias, eps=0.0, momentum=0.0)


def residual():
    """x(3) -> shared Linear(3,3) -> ReLU -> add(x, .) -> shared Linear again -> BatchNorm(3)
    -> Dropout -> Linear(3,2): a skip connection, a weight used twice, a norm layer."""
    layers = [linear(3, 3), LS(kind=LAYER["BatchNorm"], in_features=3, out_features=3, bias=True, eps=1e-5,
                              momentum=0.1), linear(3, 2, bias=False)]
    nodes = [NS(kind=NODE["Input"], width=3),
             NS(kind=NODE["Linear"], inputs=[0], width=3, layer=0),
             NS(kind=NODE["Activation"], inputs=[1], width=3, act=ACT["ReLU"]),
             NS(kind=NODE["Add"], inputs=[0, 2], width=3),
             NS(kind=NODE["Linear"], inputs=[3], width=3, layer=0),
             NS(kind=NODE["BatchNorm"], inputs=[4], width=3, layer=1),
             NS(kind=NODE["Dropout"], inputs=[5], width=3, p=0.5),
             NS(kind=NODE["Linear"], inputs=[6], width=2, layer=2)]
    return layers, nodes, 7


def test_graph_derives_consumers_uses_gradients_and_fusion():
    g = _core._graph(*residual())
    assert g["consumers"] == [[1, 3], [2], [3], [4], [5], [6], [7], []]
    assert g["layer_nodes"] == [[1, 4], [5], [7]]  # the shared Linear is used by nodes 1 and 4
    # the input needs no gradient; everything downstream of a parameter does
    assert g["needs_grad"] == [False, True, True, True, True, True, True, True]
    assert g["fused_into"][1] == 2 and g["fused"][2]  # Linear -> its only consumer, a ReLU
    assert g["fused_into"][4] == -1                    # Linear -> BatchNorm: not fused
    assert g["input_linear_only"] is False             # the input also feeds the Add


@pytest.mark.parametrize("breakage,match", [
    (lambda L, N: N.__setitem__(3, NS(kind=NODE["Add"], inputs=[0, 5], width=3)), "topological order"),
    (lambda L, N: N.__setitem__(7, NS(kind=NODE["Linear"], inputs=[6], width=4, layer=2)), "expects"),
    (lambda L, N: N.__setitem__(5, NS(kind=NODE["BatchNorm"], inputs=[4], width=3, layer=0)), "another kind"),
    (lambda L, N: N.__setitem__(6, NS(kind=NODE["Dropout"], inputs=[5], width=3, p=1.5)), "dropout p"),
    (lambda L, N: N.__setitem__(2, NS(kind=NODE["Activation"], inputs=[1], width=3, act=ACT["Softplus"], beta=0.0)),
     "beta"),
    (lambda L, N: L.__setitem__(1, LS(kind=LAYER["BatchNorm"], in_features=3, out_features=3, bias=True, eps=0.0,
                                      momentum=0.1)), "eps"),
])
def test_graph_refuses_what_the_core_cannot_run(breakage, match):
    layers, nodes, out = residual()
    breakage(layers, nodes)
    with pytest.raises(ValueError, match=match):
        _core._graph(layers, nodes, out)


def test_param_store_lays_out_weight_then_bias_per_layer_and_initializes_buffers():
    d = _core._param_layout(*residual())
    assert d["tensors"] == [(0, "weight", 0, 3, 3), (0, "bias", 9, 3, 0), (1, "weight", 12, 3, 0),
                            (1, "bias", 15, 3, 0), (2, "weight", 18, 2, 3)]
    assert d["n_params"] == 24
    assert d["buffers"] == [(1, "running_mean", 0, 3, 0), (1, "running_var", 3, 3, 0)]
    assert d["buffer_values"] == [0, 0, 0, 1, 1, 1]


def test_param_store_refuses_a_model_larger_than_memory():
    layers, nodes = [linear(10**6, 10**6)], [NS(kind=NODE["Input"], width=10**6),
                                             NS(kind=NODE["Linear"], inputs=[0], width=10**6, layer=0)]
    with pytest.raises(MemoryError, match="layer 0"):
        _core._param_layout(layers, nodes, 1)


def test_workspace_sizes_follow_the_graph_and_the_rows():
    layers, nodes, out = residual()
    d = _core._workspace(layers, nodes, out, 5)
    assert d["cap"] == 5
    assert d["outs"] == [0] + [5 * n.width for n in nodes[1:]]  # the input is never copied
    assert d["gouts"] == [0] + [5 * n.width for n in nodes[1:]]
    assert d["aux"][5] == 2 * 3 and d["aux"][6] == 5 * 3      # BatchNorm statistics, dropout masks
    assert _core._workspace(layers, nodes, out, 0)["cap"] == 0
    with pytest.raises(MemoryError, match="X: a batch of"):
        _core._workspace(layers, nodes, out, 10**14)
