"""The public seams of a Model that the package's tools use: clone, named optimizer state,
rng_state, nodes / layer_name, and train_step's one input preparation."""
import numpy as np
import pytest

import layerprop as lp
from layerprop.model import Model


def seq(dtype="float32"):
    m = lp.Sequential(lp.Linear(3, 5), lp.BatchNorm1d(5), lp.ReLU(), lp.Dropout(0.2), lp.Linear(5, 2),
                      dtype=dtype, seed=0)
    return m


def graph():
    x = lp.Input(3)
    shared = lp.Linear(3, 3, name="shared")
    h = lp.add(shared(x), shared(lp.Tanh()(x)))
    return lp.Model(x, lp.Linear(3, 2, name="head")(h), seed=1)


def data(n=8):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 2))


@pytest.mark.parametrize("make", [seq, graph])
def test_clone_copies_parameters_buffers_mode_and_generators(make):
    m = make()
    m.compile(loss="mse", optimizer=lp.Adam(lr=0.01))
    X, y = data()
    m.fit(X, y, epochs=2, batch_size=4, progress=False)
    m.eval()
    c = m.clone(dtype="float64")
    assert type(c) is type(m) and c.dtype == "float64" and c.loss is None and not c.training
    assert list(c.parameters()) == list(m.parameters()) and list(c.buffers()) == list(m.buffers())
    for name, p in m.parameters().items():
        assert c.parameters()[name].dtype == np.float64
        assert np.array_equal(c.parameters()[name], p.astype(np.float64))
    for name, b in m.buffers().items():
        assert np.array_equal(c.buffers()[name], b.astype(np.float64))
    assert c.rng_state["core"] == m.rng_state["core"]
    assert c.rng_state["shuffle"] == m.rng_state["shuffle"]
    assert np.allclose(c.predict(X), m.predict(X), atol=1e-5)
    # a copy, not views: changing the clone leaves the model alone
    before = m.parameters()["head.weight" if "head.weight" in m.parameters() else "0.weight"].copy()
    for p in c.parameters().values():
        p[...] = 0
    after = m.parameters()["head.weight" if "head.weight" in m.parameters() else "0.weight"]
    assert np.array_equal(before, after)
    same = m.clone()
    assert same.dtype == "float32" and np.array_equal(same.predict(X), m.predict(X))


def test_from_graph_names_and_nodes():
    g = graph()
    nodes = g.nodes
    assert nodes[0].op == "input" and len(nodes) == len(g.nodes)
    twin = Model._from_graph(nodes[0], nodes[-1], "float64", 1,
                             names={id(l): g.layer_name(l) for l in g.layers if g.layer_name(l)})
    assert list(twin.parameters()) == list(g.parameters()) == ["shared.weight", "shared.bias",
                                                               "head.weight", "head.bias"]
    assert g.layer_name(g.layers[0]) == "shared"
    assert g.layer_name(lp.ReLU()) is None
    assert all(g.layer_name(l) is None for l in g.layers if isinstance(l, lp.Tanh))


@pytest.mark.parametrize("opt,names", [
    (lambda: lp.Adam(lr=0.01), ["step", "exp_avg", "exp_avg_sq"]),
    (lambda: lp.AdamW(lr=0.01), ["step", "exp_avg", "exp_avg_sq"]),
    (lambda: lp.SGD(lr=0.1, momentum=0.9), ["step", "momentum_buffer"]),
    (lambda: lp.SGD(lr=0.1), ["step"]),
])
def test_named_optimizer_state_round_trip(opt, names):
    X, y = data()
    a, b = seq(), seq()
    for m in (a, b):
        m.compile(loss="mse", optimizer=opt())
    for _ in range(3):
        a.train_step(X, y)
    for name, p in a.parameters().items():
        b.parameters()[name][...] = p
    for name, buf in a.buffers().items():
        b.buffers()[name][...] = buf
    state = a.optimizer_state()
    assert list(state) == list(a.parameters())
    for name, entry in state.items():
        assert list(entry) == names and entry["step"] == 3
        for k in names[1:]:
            assert entry[k].shape == a.parameters()[name].shape and entry[k].dtype == np.float32
    if len(names) > 1:
        assert any(np.any(e[names[1]] != 0) for e in state.values())
    b.load_optimizer_state(state)
    b.rng_state = a.rng_state
    assert a.train_step(X, y) == b.train_step(X, y)  # the same state: the same next step
    for name, p in a.parameters().items():
        assert np.array_equal(p, b.parameters()[name])
    # copies: changing what was returned changes nothing
    for entry in state.values():
        for k in names[1:]:
            entry[k][...] = 123.0
    assert all(np.all(e[k] != 123.0) for e in a.optimizer_state().values() for k in names[1:])


def test_load_optimizer_state_refusals():
    m = seq()
    with pytest.raises(RuntimeError, match="compile"):
        m.load_optimizer_state({})
    m.compile(loss="mse", optimizer=lp.Adam())
    state = m.optimizer_state()
    with pytest.raises(ValueError, match="state: expected an entry for each"):
        m.load_optimizer_state({k: v for k, v in list(state.items())[1:]})
    bad = {k: dict(v) for k, v in state.items()}
    bad["0.weight"]["exp_avg"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"state\['0.weight'\]\['exp_avg'\]: expected shape \(5, 3\)"):
        m.load_optimizer_state(bad)
    bad = {k: dict(v) for k, v in state.items()}
    bad["0.bias"]["step"] = True
    with pytest.raises(ValueError, match=r"state\['0.bias'\]\['step'\]: expected an int"):
        m.load_optimizer_state(bad)
    assert m.optimizer_state()["0.weight"]["step"] == 0


def test_rng_state_get_set():
    X, y = data(12)
    a, b = seq(), seq()
    for m in (a, b):
        m.compile(loss="mse", optimizer=lp.SGD(lr=0.05))
    a.fit(X, y, epochs=1, batch_size=4, progress=False)
    st = a.rng_state
    assert set(st) == {"shuffle", "core"} and len(st["core"]) == 2
    b.rng_state = st
    for name, p in a.parameters().items():
        b.parameters()[name][...] = p
    for name, buf in a.buffers().items():
        b.buffers()[name][...] = buf
    ha = a.fit(X, y, epochs=1, batch_size=4, progress=False)  # same shuffles, same dropout masks
    hb = b.fit(X, y, epochs=1, batch_size=4, progress=False)
    assert ha.history["loss"] == hb.history["loss"]
    with pytest.raises(ValueError, match="rng_state"):
        a.rng_state = {"core": (1, -1)}
    with pytest.raises(ValueError, match="rng_state"):
        a.rng_state = {"shuffle": {"bit_generator": "MT19937"}}
    with pytest.raises(ValueError, match="rng_state"):
        a.rng_state = {"other": 1}


def test_train_step_prepares_input_by_dtype_without_retrying(monkeypatch):
    """float64 data for a float32 model is converted before the core is called, once: the
    core sees exactly one call, with float32 arrays (a Fortran-ordered float32 X goes in as it
    is: the core copies it to C order, and the step equals the C-ordered one)."""
    m = lp.Sequential(lp.Linear(3, 2), seed=0).compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    X, y = data()
    seen = []

    class Spy:
        def __init__(self, core):
            self.core = core

        def train_step(self, *args):
            seen.append([(a.dtype, a.flags.c_contiguous) for a in args if a is not None])
            return self.core.train_step(*args)

        def __getattr__(self, name):  # everything else goes to the core unrecorded
            return getattr(self.core, name)
    monkeypatch.setattr(m, "_core", Spy(m._core))
    m2 = lp.Sequential(lp.Linear(3, 2), seed=0).compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    m.train_step(X, y)
    m2.train_step(X, y)
    loss_f = m.train_step(np.asfortranarray(X.astype(np.float32)), y.astype(np.float32))
    assert loss_f == m2.train_step(X.astype(np.float32), y.astype(np.float32))
    for name, p in m.parameters().items():
        assert np.array_equal(p, m2.parameters()[name])
    with pytest.raises(TypeError, match="X"):
        m.train_step(X.astype(np.int32), y)
    assert seen == [[(np.float32, True), (np.float32, True)], [(np.float32, False), (np.float32, True)]]


@pytest.mark.parametrize("call", ["train_step", "compute_gradients", "loss_and_grads", "evaluate"])
@pytest.mark.parametrize("shape", [(), (4,), (2, 2, 1)])
def test_wrongly_shaped_X_in_the_models_dtype_is_a_value_error(call, shape):
    """X already in the model's dtype but not 2-D is refused naming X (never an IndexError
    from the preparation's fast path)."""
    m = lp.Sequential(lp.Linear(1, 2), seed=0).compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.1))
    X = np.ones(shape, np.float32)
    y = np.zeros(4 if shape == (4,) else 1, np.int64)
    with pytest.raises(ValueError, match="X"):
        getattr(m, call)(X, y)
