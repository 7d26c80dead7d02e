"""model.save / lp.load: bitwise round trips, training that continues where it stopped, and
clear ValueErrors (never a crash, never code execution) for truncated, corrupt or hostile files."""

import json
import os
import sys

import numpy as np
import pytest

import layerprop as lp
from layerprop import io as lpio

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402
from conftest import read_saved  # noqa: E402

N_IN, N_OUT = 5, 3


def data(n=24, loss="cross_entropy", dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_IN)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, N_OUT, n)
    else:
        y = rng.standard_normal((n, N_OUT)).astype(dtype)
    return X, y


def seq(dtype="float32", dropout=False):
    layers = [lp.Linear(N_IN, 8), lp.LeakyReLU(0.2), lp.Linear(8, 8), lp.GELU()]
    if dropout:
        layers.append(lp.Dropout(0.3))
    layers += [lp.Linear(8, 6, bias=False), lp.Tanh(), lp.Linear(6, N_OUT), lp.Sigmoid(), lp.Identity()]
    return lp.Sequential(*layers, dtype=dtype, seed=7)


def graph(dtype="float32"):
    x = lp.Input(N_IN)
    h = lp.ReLU()(lp.Linear(N_IN, 8, name="enc")(x))
    s = lp.add(h, lp.Linear(N_IN, 8)(x))
    shared = lp.Linear(8, 8)
    y = shared(lp.Tanh()(shared(s)))
    c = lp.concat([y, s])
    return lp.Model(inputs=x, outputs=lp.Linear(16, N_OUT)(c), dtype=dtype, seed=11)


OPTIMIZERS = {
    "sgd_momentum": lambda: lp.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "sgd_plain": lambda: lp.SGD(lr=0.05),
    "adam": lambda: lp.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.01),
    "adamw": lambda: lp.AdamW(lr=0.01),
}


def params_of(model):
    return {k: v.copy() for k, v in model.parameters().items()}


def assert_same_params(a, b):
    pa, pb = a.parameters(), b.parameters()
    assert list(pa) == list(pb)
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), k


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("build", [seq, graph], ids=["sequential", "graph"])
def test_round_trip_is_bitwise(tmp_path, build, dtype):
    model = build(dtype)
    X, _ = data(dtype=dtype)
    path = tmp_path / "m.safetensors"
    model.save(path)
    back = lp.load(path)
    assert type(back) is type(model)
    assert back.dtype == dtype and back.seed == model.seed
    assert_same_params(model, back)
    assert np.array_equal(model.predict(X), back.predict(X))
    assert back.summary() == model.summary()
    assert back.loss is None  # never compiled


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("build", [seq, graph], ids=["sequential", "graph"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_three_saved_three_more_equals_six_straight(tmp_path, build, opt, loss):
    X, y = data(loss=loss)
    straight = build().compile(loss=loss, optimizer=OPTIMIZERS[opt]())
    losses_straight = [straight.train_step(X, y) for _ in range(6)]

    first = build().compile(loss=loss, optimizer=OPTIMIZERS[opt]())
    losses = [first.train_step(X, y) for _ in range(3)]
    first.save(tmp_path / "ckpt.safetensors")
    resumed = lp.load(tmp_path / "ckpt.safetensors")
    assert resumed.loss == loss and type(resumed.optimizer) is type(first.optimizer)
    assert vars(resumed.optimizer) == vars(first.optimizer)
    assert resumed._core.steps() == first._core.steps()
    losses += [resumed.train_step(X, y) for _ in range(3)]

    assert losses == losses_straight
    assert_same_params(straight, resumed)
    assert losses_straight[0] != losses_straight[-1]


def test_fit_continues_with_the_same_shuffling(tmp_path):
    X, y = data(n=50)
    straight = seq().compile(optimizer=lp.Adam(lr=0.01))
    h = straight.fit(X, y, epochs=3, batch_size=8, progress=False)
    part = seq().compile(optimizer=lp.Adam(lr=0.01))
    h1 = part.fit(X, y, epochs=1, batch_size=8, progress=False)
    part.save(tmp_path / "m.safetensors")
    resumed = lp.load(tmp_path / "m.safetensors")
    h2 = resumed.fit(X, y, epochs=3, initial_epoch=1, batch_size=8, progress=False)
    assert h1.history["loss"] + h2.history["loss"] == h.history["loss"]
    assert h2.epoch == [1, 2]
    assert_same_params(straight, resumed)


def test_dropout_training_continues_bitwise(tmp_path):
    X, y = data()
    straight = seq(dropout=True).compile(optimizer=lp.SGD(lr=0.1))
    ls = [straight.train_step(X, y) for _ in range(4)]
    first = seq(dropout=True).compile(optimizer=lp.SGD(lr=0.1))
    l1 = [first.train_step(X, y) for _ in range(2)]
    first.save(tmp_path / "m.safetensors")
    resumed = lp.load(tmp_path / "m.safetensors")
    assert l1 + [resumed.train_step(X, y) for _ in range(2)] == ls


def norm_seq(dtype="float32"):
    return lp.Sequential(lp.Linear(N_IN, 8), lp.BatchNorm1d(8, momentum=0.2), lp.ReLU(),
                         lp.LayerNorm(8, eps=1e-4), lp.Linear(8, 6), lp.BatchNorm1d(6, affine=False),
                         lp.Tanh(), lp.Linear(6, N_OUT), dtype=dtype, seed=5)


def norm_graph():
    x = lp.Input(N_IN)
    h = lp.BatchNorm1d(8, name="bn")(lp.Linear(N_IN, 8)(x))
    s = lp.add(lp.ReLU()(h), lp.LayerNorm(8)(lp.Linear(N_IN, 8)(x)))
    return lp.Model(x, lp.Linear(8, N_OUT)(s), seed=2)


SCHEDULES = {
    "simultaneous": lambda: lp.Simultaneous(),
    "layerwise": lambda: lp.Layerwise(order="bottom_up"),
    "locoprop": lambda: lp.LocoProp(variant="S", inner_steps=3, inner_lr=0.05, target_lr=2.0),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("build", [norm_seq, norm_graph], ids=["sequential", "graph"])
def test_norm_layers_and_schedules_continue_bitwise(tmp_path, build, schedule):
    X, y = data()
    def fresh():
        return build().compile(optimizer=lp.Adam(lr=0.01), schedule=SCHEDULES[schedule]())
    straight = fresh()
    ls = [straight.train_step(X, y) for _ in range(6)]
    first = fresh()
    l1 = [first.train_step(X, y) for _ in range(3)]
    first.save(tmp_path / "m.safetensors")
    resumed = lp.load(tmp_path / "m.safetensors")
    assert vars(resumed.schedule) == vars(first.schedule)
    assert list(resumed.buffers()) == list(first.buffers()) and len(resumed.buffers()) >= 2
    for k, v in first.buffers().items():
        assert np.array_equal(resumed.buffers()[k], v), k
    assert l1 + [resumed.train_step(X, y) for _ in range(3)] == ls
    assert_same_params(straight, resumed)
    for k, v in straight.buffers().items():
        assert np.array_equal(resumed.buffers()[k], v), k
    assert np.array_equal(straight.predict(X), resumed.predict(X))


def test_include_optimizer_false_keeps_compile_settings_but_no_state(tmp_path):
    X, y = data()
    model = seq().compile(loss="cross_entropy", optimizer=lp.Adam(lr=0.02))
    for _ in range(3):
        model.train_step(X, y)
    model.save(tmp_path / "m.safetensors", include_optimizer=False)
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        assert not [k for k in f.keys() if k.startswith("optimizer.")]
        assert sorted(f.keys()) == sorted(model.parameters())
    back = lp.load(tmp_path / "m.safetensors")
    assert back.loss == "cross_entropy" and back.optimizer.lr == 0.02
    assert back._core.steps() == [0] * len(back._core.steps())
    assert not back._core.state_view(0).any()
    assert back.evaluate(X, y) == model.evaluate(X, y)


def test_eval_mode_and_names_survive(tmp_path):
    model = lp.Sequential(lp.Linear(N_IN, 4, name="first"), lp.ReLU(name="act"), lp.Linear(4, 2), seed=0)
    model.eval()
    model.save(tmp_path / "m.safetensors")
    back = lp.load(tmp_path / "m.safetensors")
    assert not back.training
    assert list(back.parameters()) == ["first.weight", "first.bias", "2.weight", "2.bias"]
    assert back._seq_layers[1].name == "act"


def test_file_is_a_plain_state_dict_for_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    model = lp.Sequential(lp.Linear(N_IN, 8), lp.ReLU(), lp.Linear(8, N_OUT), dtype="float64", seed=0)
    model.compile(optimizer=lp.Adam())
    model.save(tmp_path / "m.safetensors", include_optimizer=False)
    tm = torch.nn.Sequential(torch.nn.Linear(N_IN, 8), torch.nn.ReLU(), torch.nn.Linear(8, N_OUT)).double()
    tm.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    X, _ = data(dtype="float64")
    with torch.no_grad():
        np.testing.assert_allclose(tm(torch.from_numpy(X)).numpy(), model.predict(X), rtol=1e-12, atol=1e-12)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    model = seq()
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()
    assert os.listdir(tmp_path) == ["m.safetensors"]

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    model.parameters()["0.weight"][...] = 0
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_refuses_unknown_layers_and_bad_arguments(tmp_path):
    class Custom(lp.ReLU):
        act_code = 1  # runs as a ReLU in the core, but io has no spec for it
    model = lp.Sequential(lp.Linear(3, 3), Custom(), seed=0)
    with pytest.raises(TypeError, match="Custom"):
        model.save(tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="include_optimizer"):
        seq().save(tmp_path / "m.safetensors", include_optimizer="yes")
    assert not (tmp_path / "m.safetensors").exists()
    assert os.listdir(tmp_path) == []


def test_missing_safetensors_gives_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        seq().save(tmp_path / "m.safetensors")
    with pytest.raises(ImportError, match="safetensors"):
        lp.load(tmp_path / "m.safetensors")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        lp.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        lp.load(tmp_path)


def test_model_state_round_trip_without_files():
    model = graph().compile(optimizer=lp.Adam(lr=0.01))
    X, y = data()
    model.train_step(X, y)
    tensors, meta = lpio.model_to_state(model)
    back = lpio.model_from_state(tensors, meta)
    assert_same_params(model, back)
    assert model.train_step(X, y) == back.train_step(X, y)
    with pytest.raises(ValueError, match="model state"):
        lpio.model_from_state(tensors, {"layerprop": "{"})


# ----------------------------------------------------------------------------- hostile files
def saved(tmp_path, model=None, compiled=True):
    model = model if model is not None else seq()
    if compiled:
        model.compile(optimizer=lp.Adam(lr=0.01))
        X, y = data()
        model.train_step(X, y)
    path = tmp_path / "good.safetensors"
    model.save(path)
    tensors, meta = read_saved(path)
    return path, tensors, meta


def write(tmp_path, tensors, meta, raw_meta=None):
    path = tmp_path / "bad.safetensors"
    md = {"layerprop": raw_meta if raw_meta is not None else json.dumps(meta)}
    st.save_file(tensors, str(path), metadata=md)
    return path


def refused(path, match):
    with pytest.raises(ValueError, match=match):
        lp.load(path)


@pytest.mark.parametrize("cut", [0, 4, 8, 20, 100, -1, -17])
def test_truncated_file(tmp_path, cut):
    path, _, _ = saved(tmp_path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    refused(bad, "bad.safetensors")


@pytest.mark.parametrize("payload", [
    b"", b"not a safetensors file at all",
    (2 ** 62).to_bytes(8, "little") + b"{}",          # absurd header length
    (10).to_bytes(8, "little") + b"{\"a\": [1, 2",    # header shorter than declared / not JSON
    (2).to_bytes(8, "little") + b"{}",                # no tensors, no metadata
])
def test_garbage_files(tmp_path, payload):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(payload)
    refused(bad, "bad.safetensors")


def test_corrupt_header_offsets(tmp_path):
    path, _, _ = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [0, 10 ** 12]
    hb = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    refused(bad, "bad.safetensors")


def test_plain_safetensors_without_metadata(tmp_path):
    path = tmp_path / "bad.safetensors"
    st.save_file({"0.weight": np.zeros((3, 5), np.float32)}, str(path))
    refused(path, "no layerprop metadata")


@pytest.mark.parametrize("raw", ["{", "[1, 2]", "null", "\"text\"", "[" * 100000 + "]" * 100000,
                                 "{\"format\": \"layerprop\", \"format_version\": 1}"])
def test_bad_metadata_json(tmp_path, raw):
    _, tensors, _ = saved(tmp_path)
    refused(write(tmp_path, tensors, None, raw_meta=raw), "bad.safetensors")


def mutate(tmp_path, fn, match, model=None, compiled=True):
    _, tensors, meta = saved(tmp_path, model, compiled)
    fn(tensors, meta)
    refused(write(tmp_path, tensors, meta), match)


HOSTILE = {
    "unknown layer type": (lambda t, m: m["model"]["layers"][1].update(type="__import__('os').system('touch pwned')"),
                           "unknown layer type"),
    "base class as type": (lambda t, m: m["model"]["layers"][1].update(type="Layer"), "unknown layer type"),
    "huge declared sizes": (lambda t, m: m["model"]["layers"][0]["config"].update(in_features=2 ** 40, out_features=2 ** 40),
                            "in_features|too large|declares"),
    "huge but within limit": (lambda t, m: m["model"]["layers"][0]["config"].update(out_features=2 ** 30),
                              "declares|shape"),
    "negative width": (lambda t, m: m["model"]["layers"][0]["config"].update(in_features=-5), "in_features"),
    "float width": (lambda t, m: m["model"]["layers"][0]["config"].update(in_features=5.0), "in_features"),
    "bool bias as string": (lambda t, m: m["model"]["layers"][0]["config"].update(bias="yes"), "bias"),
    "extra config key": (lambda t, m: m["model"]["layers"][1]["config"].update(evil=1), "unknown"),
    "bad dropout p": (lambda t, m: m["model"]["layers"][1].update(type="Dropout", config={"p": 7}), "p"),
    "nan slope": (lambda t, m: m["model"]["layers"][1].update(config={"negative_slope": "nan"}), "negative_slope"),
    "wrong dtype name": (lambda t, m: m["model"].update(dtype="object"), "dtype"),
    "wrong class": (lambda t, m: m["model"].update(**{"class": "os.system"}), "class"),
    "newer format": (lambda t, m: m.update(format_version=99), "newer"),
    "not layerprop": (lambda t, m: m.update(format="pickle"), "format"),
    "unknown top key": (lambda t, m: m.update(exec="rm -rf /"), "unknown keys"),
    "missing tensor": (lambda t, m: t.pop("2.weight"), "2.weight"),
    "missing state": (lambda t, m: t.pop("optimizer.slot1.0.bias"), "optimizer.slot1.0.bias"),
    "missing steps": (lambda t, m: t.pop("optimizer.steps"), "optimizer.steps"),
    "wrong shape": (lambda t, m: t.update({"0.weight": np.zeros((5, 8), np.float32)}), "shape"),
    "wrong state shape": (lambda t, m: t.update({"optimizer.slot0.0.weight": np.zeros((3,), np.float32)}), "shape"),
    "wrong dtype f64": (lambda t, m: t.update({"0.bias": t["0.bias"].astype(np.float64)}), "dtype"),
    "wrong dtype f16": (lambda t, m: t.update({"0.bias": t["0.bias"].astype(np.float16)}), "dtype"),
    "wrong dtype int": (lambda t, m: t.update({"0.bias": t["0.bias"].astype(np.int32)}), "dtype"),
    "steps dtype": (lambda t, m: t.update({"optimizer.steps": t["optimizer.steps"].astype(np.float32)}), "dtype"),
    "negative steps": (lambda t, m: t.update({"optimizer.steps": -t["optimizer.steps"]}), "step counts"),
    "renamed params": (lambda t, m: m.update(params=list(reversed(m["params"]))), "params"),
    "duplicate params": (lambda t, m: m.update(params=m["params"] * 2), "params"),
    "unknown optimizer": (lambda t, m: m["compile"]["optimizer"].update(type="EvalOptimizer"), "unknown optimizer"),
    "bad lr": (lambda t, m: m["compile"]["optimizer"]["config"].update(lr=-1.0), "lr"),
    "unknown loss": (lambda t, m: m["compile"].update(loss="hinge"), "loss"),
    "unknown schedule": (lambda t, m: m["compile"]["schedule"].update(type="Magic"), "schedule"),
    "slot count": (lambda t, m: m["optimizer_state"].update(slots=1), "slots"),
    "state without compile": (lambda t, m: m.update(compile=None), "optimizer_state"),
    "bad rng": (lambda t, m: m["rng"].update(shuffle={"bit_generator": "MT19937", "state": {}}), "rng"),
    "bad rng state": (lambda t, m: m["rng"]["shuffle"].update(state="x"), "rng"),
    "layers not a list": (lambda t, m: m["model"].update(layers={"a": 1}), "layers"),
    "layers empty": (lambda t, m: m["model"].update(layers=[]), "layers"),
    "bad name": (lambda t, m: m["model"]["layers"][0].update(name="a.b"), "name"),
    "seed negative": (lambda t, m: m["model"].update(seed=-1), "seed"),
    "bad core rng": (lambda t, m: m["rng"].update(core=[-1, 2]), "rng.core"),
    "core rng not a pair": (lambda t, m: m["rng"].update(core=[1, 2, 3]), "rng.core"),
}

NORM_HOSTILE = {
    "missing running_var": (lambda t, m: t.pop("1.running_var"), "1.running_var"),
    "buffer shape": (lambda t, m: t.update({"1.running_mean": np.zeros(3, np.float32)}), "shape"),
    "buffer dtype": (lambda t, m: t.update({"1.running_mean": t["1.running_mean"].astype(np.float64)}), "dtype"),
    "buffers unlisted": (lambda t, m: m.update(buffers=[]), "buffers"),
    "huge num_features": (lambda t, m: m["model"]["layers"][1]["config"].update(num_features=2 ** 39), "declares"),
    "bad momentum": (lambda t, m: m["model"]["layers"][1]["config"].update(momentum=2.0), "momentum"),
    "bad eps": (lambda t, m: m["model"]["layers"][3]["config"].update(eps=0.0), "eps"),
    "schedule args": (lambda t, m: m["compile"]["schedule"].update(type="Layerwise", config={"order": "sideways"}), "order"),
    "schedule arg type": (lambda t, m: m["compile"]["schedule"].update(type="Layerwise", config={"order": ["x"]}), "order"),
    "schedule extra arg": (lambda t, m: m["compile"]["schedule"]["config"].update(cmd="ls"), "unknown"),
}


@pytest.mark.parametrize("case", list(NORM_HOSTILE))
def test_hostile_norm_files(tmp_path, case):
    fn, match = NORM_HOSTILE[case]
    mutate(tmp_path, fn, match, model=norm_seq())


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_and_tensors(tmp_path, case):
    fn, match = HOSTILE[case]
    mutate(tmp_path, fn, match)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def _graph_nodes(m):
    return m["model"]["graph"]["nodes"]


GRAPH_HOSTILE = {
    "cycle / forward reference": (lambda t, m: _graph_nodes(m)[1].update(inputs=[5]), "inputs"),
    "self reference": (lambda t, m: _graph_nodes(m)[2].update(inputs=[2]), "inputs"),
    "unknown op": (lambda t, m: _graph_nodes(m)[4].update(op="eval"), "unknown op"),
    "layer index out of range": (lambda t, m: _graph_nodes(m)[1].update(layer=99), "layer"),
    "width mismatch": (lambda t, m: _graph_nodes(m)[0].update(width=6), "expects|width|declares"),
    "first node not input": (lambda t, m: _graph_nodes(m)[0].update(op="add"), "input"),
    "dangling node": (lambda t, m: _graph_nodes(m).append({"op": "layer", "layer": 1, "inputs": [0]}),
                      "output|width|expects"),
    "empty inputs": (lambda t, m: _graph_nodes(m)[4].update(inputs=[]), "empty"),
    "add of one": (lambda t, m: _graph_nodes(m)[4].update(inputs=[2]), "add"),
    "nodes missing": (lambda t, m: m["model"].pop("graph"), "keys"),
    "linear without prefix": (lambda t, m: m["model"]["layers"][2].pop("prefix"), "prefix"),
    "prefix clash": (lambda t, m: m["model"]["layers"][2].update(prefix="enc"), "unique"),
}


@pytest.mark.parametrize("case", list(GRAPH_HOSTILE))
def test_hostile_graphs(tmp_path, case):
    fn, match = GRAPH_HOSTILE[case]
    mutate(tmp_path, fn, match, model=graph())


def test_refused_load_has_no_side_effects_on_existing_models(tmp_path):
    model = seq().compile(optimizer=lp.SGD(lr=0.1))
    before = params_of(model)
    path, tensors, meta = saved(tmp_path, model)
    tensors.pop("2.weight")
    with pytest.raises(ValueError):
        lp.load(write(tmp_path, tensors, meta))
    for k, v in model.parameters().items():
        assert np.array_equal(v, params_of(lp.load(path))[k])
    assert before.keys() == model.parameters().keys()
