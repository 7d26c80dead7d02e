"""lp.load on hostile files: every check before allocation and in linear time, bounded sizes,
no NaN weights, only ValueError (never a hang, a MemoryError or a crash). Also runs the
atheris harness tests/fuzz/fuzz_load.py's one-input functions without atheris."""

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import layerprop as lp
from layerprop import io as lpio

st = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import fuzz_load  # noqa: E402


def meta_of(layers, params, buffers=(), dtype="float32", graph=None, compile=None, opt_state=None):
    model = {"class": "Sequential" if graph is None else "Model", "dtype": dtype, "seed": 0,
             "training": True, "layers": layers}
    if graph is not None:
        model["graph"] = {"nodes": graph}
    return {"format": "layerprop", "format_version": 1, "layerprop_version": lp.__version__,
            "model": model, "params": list(params), "buffers": list(buffers), "compile": compile,
            "optimizer_state": opt_state, "rng": {"shuffle": None, "core": None}}


def write(tmp_path, tensors, meta, name="bad.safetensors"):
    path = tmp_path / name
    st.save_file(tensors, str(path), metadata={"layerprop": json.dumps(meta)})
    return path


def linear(n_in, n_out, bias=True, name=None, prefix=None):
    spec = {"type": "Linear", "name": name, "config": {"in_features": n_in, "out_features": n_out, "bias": bias}}
    if prefix is not None:
        spec["prefix"] = prefix
    return spec


def relu():
    return {"type": "ReLU", "name": None, "config": {}}


def deep_relu_file(tmp_path, n_layers):
    """Linear(2, 2) then n_layers - 1 ReLUs: a tiny file with a long architecture."""
    tensors = {"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)}
    meta = meta_of([linear(2, 2)] + [relu() for _ in range(n_layers - 1)], ["0.weight", "0.bias"])
    return write(tmp_path, tensors, meta)


def saved(tmp_path, model):
    path = tmp_path / "good.safetensors"
    model.save(path)
    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["layerprop"])
    return tensors, meta


def small_seq(**kw):
    return lp.Sequential(lp.Linear(3, 4), lp.BatchNorm1d(4), lp.ReLU(), lp.Linear(4, 2), seed=0, **kw)


def trained(model, optimizer=None, schedule=None):
    model.compile(optimizer=optimizer or lp.Adam(lr=0.01), schedule=schedule)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, model.in_features)).astype(model.dtype)
    model.train_step(X, rng.integers(0, model.out_features, 8))
    return model


# ----------------------------------------------------------------------------- 1. size and time
def test_too_many_layers_is_refused_before_building(tmp_path):
    path = deep_relu_file(tmp_path, 12_000)  # took ~17 s to load, quadratic in the layer count
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"model.layers: 12000 items, more than the limit of {lpio.MAX_LAYERS}"):
        lp.load(path)
    assert time.perf_counter() - t0 < 3.0


def test_a_model_at_the_layer_limit_loads(tmp_path):
    path = deep_relu_file(tmp_path, lpio.MAX_LAYERS)
    t0 = time.perf_counter()
    model = lp.load(path)
    assert len(model._seq_layers) == lpio.MAX_LAYERS
    assert time.perf_counter() - t0 < 20.0
    with pytest.raises(ValueError, match="limit"):
        lp.load(deep_relu_file(tmp_path, lpio.MAX_LAYERS + 1))


def test_optimizer_state_of_many_layers_loads_in_linear_time(tmp_path):
    # The optimizer state was restored with a list index and a full tensor listing per
    # parameter: 3000 layers took ~15 s.
    n = 3000
    model = lp.Sequential(*[lp.Linear(2, 2) for _ in range(n)], seed=0).compile(optimizer=lp.Adam())
    path = tmp_path / "deep.safetensors"
    model.save(path)
    t0 = time.perf_counter()
    back = lp.load(path)
    assert time.perf_counter() - t0 < 5.0
    assert np.array_equal(back._core.state_view(1), model._core.state_view(1))


def test_too_many_graph_nodes_and_inputs(tmp_path):
    tensors = {"l.weight": np.zeros((2, 2), np.float32), "l.bias": np.zeros(2, np.float32)}
    nodes = [{"op": "input", "width": 2, "name": None}] + \
        [{"op": "add", "inputs": [0, 0]} for _ in range(lpio.MAX_LAYERS)] + \
        [{"op": "layer", "layer": 0, "inputs": [1]}]
    meta = meta_of([linear(2, 2, prefix="l")], ["l.weight", "l.bias"], graph=nodes)
    with pytest.raises(ValueError, match="model.graph.nodes: .* more than the limit"):
        lp.load(write(tmp_path, tensors, meta))
    nodes = [{"op": "input", "width": 2, "name": None}, {"op": "add", "inputs": [0] * 200_000},
             {"op": "layer", "layer": 0, "inputs": [1]}]
    meta = meta_of([linear(2, 2, prefix="l")], ["l.weight", "l.bias"], graph=nodes)
    with pytest.raises(ValueError, match="inputs.* limit"):
        lp.load(write(tmp_path, tensors, meta))


# ----------------------------------------------------------------------------- 2. inner_steps
def test_locoprop_inner_steps_are_bounded():
    assert lp.LocoProp(inner_steps=lp.schedules.MAX_INNER_STEPS).inner_steps == 10 ** 6
    for bad in (10 ** 6 + 1, 10 ** 18):
        with pytest.raises(ValueError, match="inner_steps: expected at most 1000000"):
            lp.LocoProp(inner_steps=bad)


def test_file_with_absurd_inner_steps_is_refused(tmp_path):
    model = trained(lp.Sequential(lp.Linear(3, 4), lp.ReLU(), lp.Linear(4, 2), seed=0),
                    schedule=lp.LocoProp(inner_steps=3))
    tensors, meta = saved(tmp_path, model)
    meta["compile"]["schedule"]["config"]["inner_steps"] = 10 ** 18  # a hang no one can interrupt
    with pytest.raises(ValueError, match="inner_steps"):
        lp.load(write(tmp_path, tensors, meta))


# ----------------------------------------------------------------------------- 3. workspace
def test_nested_concats_are_refused_before_predict_allocates(tmp_path):
    # A few KB asking for gigabytes per row: each concat doubles the width.
    nodes = [{"op": "input", "width": 4, "name": None}]
    for i in range(28):
        nodes.append({"op": "concat", "inputs": [i, i]})
    nodes.append({"op": "layer", "layer": 0, "inputs": [len(nodes) - 1]})
    meta = meta_of([relu()], [], graph=nodes)
    path = write(tmp_path, {}, meta)
    assert os.path.getsize(path) < 8000
    with pytest.raises(ValueError, match=rf"one row of data needs \d+ bytes .* limit of {lpio.MAX_ROW_BYTES} bytes"):
        lp.load(path)


def test_wide_sequential_is_refused(tmp_path):
    # Parameters are cheap (a 1 x 2**24 weight would be in the file), activations are not:
    # 2**24 features through 200 ReLUs is 13 GiB for one row.
    w = 2 ** 24
    meta = meta_of([linear(1, w, bias=False)] + [relu() for _ in range(200)], ["0.weight"])
    asked = 4 * (1 + 201 * w)  # the input, the Linear and 200 ReLUs, float32
    with pytest.raises(ValueError, match=f"one row of data needs {asked} bytes"):
        lp.load(write(tmp_path, {"0.weight": np.zeros((w, 1), np.float32)}, meta))


def test_declared_parameter_bytes_are_bounded(tmp_path):
    meta = meta_of([linear(2 ** 20, 2 ** 20)], ["0.weight", "0.bias"], dtype="float64")
    with pytest.raises(ValueError, match=f"declares 8796101410816 bytes .* limit of {lpio.MAX_PARAM_BYTES}"):
        lp.load(write(tmp_path, {"0.weight": np.zeros(1, np.float64)}, meta))


# ----------------------------------------------------------------------------- 4. header first
def test_dtype_and_shape_are_checked_before_the_core_allocates(tmp_path, monkeypatch):
    # A 1-byte dtype let the element count pass: the core then allocated 4 bytes (and
    # gradients, and state) for each byte of the file before the dtype was looked at.
    n_in, n_out = 1024, 4096
    meta = meta_of([linear(n_in, n_out, bias=False)], ["0.weight"])
    path = write(tmp_path, {"0.weight": np.zeros((n_out, n_in), np.uint8)}, meta)
    from layerprop import model as lpmodel

    def no_core(*a, **k):
        raise AssertionError("the core was asked to allocate before the checks")
    monkeypatch.setattr(lpmodel._core, "ModelF32", no_core)
    monkeypatch.setattr(lpmodel._core, "ModelF64", no_core)
    with pytest.raises(ValueError, match="tensor '0.weight': expected dtype float32, got uint8"):
        lp.load(path)
    path = write(tmp_path, {"0.weight": np.zeros((n_in, n_out), np.float32)}, meta)
    with pytest.raises(ValueError, match=r"tensor '0.weight': expected shape \(4096, 1024\), got \(1024, 4096\)"):
        lp.load(path)


def test_refusing_a_large_mistyped_tensor_costs_no_memory(tmp_path):
    # 24 MiB of uint8 used to cost 1.5 GiB before the refusal, 64 MiB ended in bad_alloc.
    n_in, n_out = 4096, 6 * 1024
    meta = meta_of([linear(n_in, n_out, bias=False)], ["0.weight"])
    path = write(tmp_path, {"0.weight": np.zeros((n_out, n_in), np.uint8)}, meta)
    code = textwrap.dedent(f"""
        import resource, layerprop as lp
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            lp.load({str(path)!r})
        except ValueError as e:
            print("refused:", e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "refused:" in lines[0] and "dtype" in lines[0]
    assert int(lines[-1]) < 100, f"{lines[-1]} MiB to refuse a {os.path.getsize(path) >> 20} MiB file"


@pytest.mark.parametrize("case", ["unknown dtype", "offsets", "overlap", "gap", "metadata not text",
                                  "header not object", "huge header length", "bad utf-8", "shape not ints"])
def test_malformed_safetensors_headers(tmp_path, case):
    tensors, meta = saved(tmp_path, lp.Sequential(lp.Linear(2, 2), seed=0))
    raw = (tmp_path / "good.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]
    w, b = header["0.weight"], header["0.bias"]
    if case == "unknown dtype":
        w["dtype"] = "F128"
    elif case == "offsets":
        w["data_offsets"] = [0, 12]
    elif case == "overlap":
        b["data_offsets"] = [w["data_offsets"][0], w["data_offsets"][0] + 8]
    elif case == "gap":
        body += b"\0" * 4
    elif case == "metadata not text":
        header["__metadata__"]["layerprop"] = 3
    elif case == "header not object":
        header = [header]
    elif case == "shape not ints":
        w["shape"] = [2.0, 2]
    hb = json.dumps(header).encode()
    data = len(hb).to_bytes(8, "little") + hb + body
    if case == "huge header length":
        data = (2 ** 40).to_bytes(8, "little") + data[8:]
    elif case == "bad utf-8":
        data = data[:9] + b"\xff" + data[10:]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="bad.safetensors"):
        lp.load(path)


def test_load_bytes_is_load_on_the_file(tmp_path):
    model = trained(small_seq())
    path = tmp_path / "m.safetensors"
    model.save(path)
    back = lpio._load_bytes(path.read_bytes())
    X = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(back.predict(X), model.predict(X))
    with pytest.raises(ValueError, match="<bytes>"):
        lpio._load_bytes(b"\x00" * 7)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors"):
        lp.load(tmp_path / "empty.safetensors")


# ----------------------------------------------------------------------------- 5. values
@pytest.mark.parametrize("case,key,value,match", [
    ("nan weight", "0.weight", np.nan, "1 of 12 values are NaN or infinite"),
    ("inf bias", "3.bias", np.inf, "NaN or infinite"),
    ("nan batchnorm weight", "1.weight", -np.inf, "NaN or infinite"),
    ("nan running mean", "1.running_mean", np.nan, "NaN or infinite"),
    ("negative running variance", "1.running_var", -0.5, "running variances must be >= 0"),
    ("nan momentum", "optimizer.slot0.0.weight", np.nan, "NaN or infinite"),
    ("negative second moment", "optimizer.slot1.3.weight", -1.0, "second moments must be >= 0"),
])
def test_non_finite_or_negative_values_are_refused(tmp_path, case, key, value, match):
    tensors, meta = saved(tmp_path, trained(small_seq()))
    t = tensors[key].copy()
    t.reshape(-1)[0] = value
    tensors[key] = t
    with pytest.raises(ValueError, match=f"tensor '{key}': .*{match}"):
        lp.load(write(tmp_path, tensors, meta))


def test_in_memory_states_keep_non_finite_values():
    # model_from_state (pickling an sklearn estimator) is not a file from elsewhere: a model
    # that diverged still round-trips.
    model = small_seq()
    model.parameters()["0.weight"][0, 0] = np.nan
    tensors, meta = lpio.model_to_state(model)
    back = lpio.model_from_state(tensors, meta)
    assert np.isnan(back.parameters()["0.weight"][0, 0])


# ----------------------------------------------------------------------------- fuzz harness
def test_fuzz_harness_load_seeds_and_mutations():
    seeds = fuzz_load.load_seeds()
    for s in seeds:
        model = lpio._load_bytes(s)  # every seed is a valid file
        assert model.num_parameters() > 0
        fuzz_load.load_one_input(s)
    rnd = random.Random(20240611)
    for _ in range(400):
        fuzz_load.load_one_input(fuzz_load.mutate(rnd.choice(seeds), rnd))


# Defects of layerprop train's readers the fuzzer found (a CSV header shorter than the data rows
# raised IndexError; an .npz member that is not an .npy array raised AttributeError; numeric class
# labels of 1e999 warned in a cast; np.load left the file open on a corrupt archive).
def test_fuzz_harness_cli_seeds_and_mutations():
    seeds = fuzz_load.cli_seeds()
    for s in seeds:
        fuzz_load.cli_one_input(s)
    rnd = random.Random(7)
    for _ in range(300):
        fuzz_load.cli_one_input(fuzz_load.mutate_bytes(rnd.choice(seeds), rnd))
