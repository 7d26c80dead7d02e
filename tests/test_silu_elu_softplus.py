"""SiLU, ELU(alpha) and Softplus(beta, threshold): the kernels against torch.nn.functional
(forward and backward) and the float64 NumPy twins, both dtypes, the same bits in the AVX2 and
the portable build and for any thread count, argument checks in Python and in the core,
save/load, to_torch/from_torch and ONNX export."""
import copy
import json
import textwrap

import numpy as np
import pytest

import layerprop as lp
import reference as ref
from conftest import assert_close, make_batch
from layerprop import _core
from simd_builds import outputs_of_both_builds  # noqa: E402

torch = pytest.importorskip("torch")

TOL = {np.float64: 1e-9, np.float32: 1e-4}
CASES = {  # id: (lp layer, torch module, _eltwise settings, reference spec)
    "silu": (lambda: lp.SiLU(), lambda: torch.nn.SiLU(), {}, "silu"),
    "elu": (lambda: lp.ELU(), lambda: torch.nn.ELU(), {}, "elu"),
    "elu_alpha": (lambda: lp.ELU(alpha=0.35), lambda: torch.nn.ELU(alpha=0.35), {"alpha": 0.35}, ("elu", 0.35)),
    "softplus": (lambda: lp.Softplus(), lambda: torch.nn.Softplus(), {}, "softplus"),
    "softplus_beta_threshold": (lambda: lp.Softplus(beta=2.5, threshold=4.0),
                                lambda: torch.nn.Softplus(beta=2.5, threshold=4.0),
                                {"beta": 2.5, "threshold": 4.0}, ("softplus", (2.5, 4.0))),
}


def _x(dtype, n=4000, seed=0):
    """Values over the range where the branches of each function change, plus exact zeros."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(n // 2) * 3, rng.uniform(-40, 40, n // 2)])
    x[:6] = [0.0, -0.0, 1e-30, -1e-30, 20.0, 2.0]  # 20: x exactly at the default threshold
    return x.astype(dtype).reshape(40, -1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_torch_and_numpy(case, dtype):
    layer, module, settings, spec = CASES[case]
    act = layer().act_code
    x = _x(dtype)
    dy = _x(dtype, seed=1)
    y = _core._eltwise("forward", x, None, act, 0.0, **settings)
    dx = _core._eltwise("backward", x, (dy, y), act, 0.0, **settings)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module()(xt)
    yt.backward(torch.from_numpy(dy))
    assert_close(y, yt.detach().numpy(), TOL[dtype], f"{case} forward vs torch")
    assert_close(dx, xt.grad.numpy(), TOL[dtype], f"{case} backward vs torch")
    assert_close(y, ref.activation(spec, x), TOL[dtype], f"{case} forward vs numpy")
    assert_close(dx, dy * ref.activation_grad(spec, x), TOL[dtype], f"{case} backward vs numpy")
    # element by element, too (a relative error over the whole array could hide a small entry)
    want = ref.activation(spec, x.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=TOL[dtype], atol=TOL[dtype] * 1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_nan_and_infinities_follow_torch(case):
    layer, module, settings, _ = CASES[case]
    x = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1000.0, -1000.0, 3.0]])
    y = _core._eltwise("forward", x, None, layer().act_code, 0.0, **settings)
    want = module()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(y[~np.isnan(y)], want[~np.isnan(want)], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_model_matches_torch_loss_and_gradients(case, dtype):
    layer, module, _, _ = CASES[case]
    m = lp.Sequential(lp.Linear(5, 9), layer(), lp.Linear(9, 7), layer(), lp.Linear(7, 3), layer(),
                      dtype=dtype, seed=3)
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    net = m.to_torch()
    assert [type(x) for x in net][1::2] == [type(module())] * 3
    X, y = make_batch(np.random.default_rng(2), 11, 5, 3, "mse", dtype)
    X *= 4  # reach Softplus' linear branch
    loss, grads = m.loss_and_grads(X, y)
    tl = torch.nn.functional.mse_loss(net(torch.from_numpy(X)), torch.from_numpy(y))
    tl.backward()
    tol = TOL[np.dtype(dtype).type]
    assert loss == pytest.approx(tl.item(), rel=tol)
    for name, p in net.named_parameters():
        assert_close(grads[name], p.grad.numpy(), tol, name)


@pytest.mark.parametrize("case", list(CASES))
def test_finite_differences(case):
    layer = CASES[case][0]
    m = lp.Sequential(lp.Linear(3, 5), layer(), lp.Linear(5, 2), layer(), dtype="float64", seed=7)
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    X, y = make_batch(np.random.default_rng(4), 6, 3, 2, "mse")
    _, grads = m.loss_and_grads(X, y)
    eps = 1e-6
    for name, p in m.parameters().items():
        fd = np.empty_like(p)
        for i in np.ndindex(p.shape):
            orig = p[i]
            p[i] = orig + eps
            up = m.loss_and_grads(X, y)[0]
            p[i] = orig - eps
            down = m.loss_and_grads(X, y)[0]
            p[i] = orig
            fd[i] = (up - down) / (2 * eps)
        assert np.any(fd != 0)
        assert_close(grads[name], fd, 1e-6, name)


_ALL = textwrap.dedent("""
    import sys
    import numpy as np
    from layerprop import _core
    import layerprop as lp
    out = {}
    rng = np.random.default_rng(3)
    codes = [lp.SiLU().act_code, lp.ELU().act_code, lp.Softplus().act_code]
    data = {}
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((300, 77)) * 6).astype(dt)  # 23100 elements: split between threads
        x[0, :5] = [0.0, -0.0, np.nan, np.inf, -np.inf]
        data[dt] = (x, rng.standard_normal(x.shape).astype(dt), rng.standard_normal(32).astype(dt))
    for threads in (1, 2):
        lp.set_num_threads(threads)
        for dt in (np.float32, np.float64):
            x, dy, bias = data[dt]
            for a in codes:
                kw = dict(alpha=0.6, beta=1.7, threshold=6.0)
                y = _core._eltwise("forward", x, None, a, 0.0, **kw)
                out[f"f{a}{dt.__name__}{threads}"] = y
                out[f"b{a}{dt.__name__}{threads}"] = _core._eltwise("backward", x, (dy, y), a, 0.0, **kw)
                z, act = _core._eltwise("bias_act", np.ascontiguousarray(x[:9, :32]), bias, a, 0.0, **kw)
                out[f"e{a}{dt.__name__}{threads}"] = act
    np.savez(sys.argv[1], **out)
""")


def test_same_bits_in_both_builds_and_any_thread_count(tmp_path):
    a, b = outputs_of_both_builds(tmp_path, _ALL)
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 36
    for k in a.files:
        assert a[k].tobytes() == b[k].tobytes(), k
        if k.endswith("1"):
            assert a[k].tobytes() == a[k[:-1] + "2"].tobytes(), k


@pytest.mark.parametrize("make,match", [
    (lambda: lp.ELU(alpha=float("nan")), "alpha"),
    (lambda: lp.ELU(alpha="x"), "alpha"),
    (lambda: lp.ELU(alpha=True), "alpha"),
    (lambda: lp.Softplus(beta=0.0), "beta"),
    (lambda: lp.Softplus(beta=-1.0), "beta"),
    (lambda: lp.Softplus(beta=float("inf")), "beta"),
    (lambda: lp.Softplus(threshold=float("nan")), "threshold"),
    (lambda: lp.Softplus(threshold=None), "threshold"),
])
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kw,match", [
    (dict(act=_core.Act.ELU.value, alpha=float("nan")), "alpha"),
    (dict(act=_core.Act.Softplus.value, beta=0.0), "beta"),
    (dict(act=_core.Act.Softplus.value, threshold=float("inf")), "threshold"),
    (dict(act=_core.Act.LeakyReLU.value, negative_slope=float("nan")), "negative_slope"),
    (dict(act=99), "NodeSpec.act"),
])
def test_core_checks_the_settings_it_reads(kw, match):
    with pytest.raises(ValueError, match=match):
        nodes = [_core.NodeSpec(kind=_core.NodeKind.Input.value, width=3),
                 _core.NodeSpec(kind=_core.NodeKind.Activation.value, inputs=[0], width=3, **kw)]
        _core.ModelF64([], nodes, 1)


def test_node_spec_has_named_fields():
    s = _core.NodeSpec(kind=_core.NodeKind.Activation.value, inputs=[0], width=4, act=_core.Act.Softplus.value,
                       beta=2.0, threshold=5.0)
    assert (s.kind, s.inputs, s.width, s.act, s.beta, s.threshold, s.alpha, s.p) == \
        (_core.NodeKind.Activation.value, [0], 4, _core.Act.Softplus.value, 2.0, 5.0, 1.0, 0.0)
    d = _core.NodeSpec(kind=_core.NodeKind.Dropout.value, inputs=[0], width=4, p=0.25)
    assert d.p == 0.25
    with pytest.raises(ValueError, match="NodeSpec.kind"):
        _core.NodeSpec(kind=_core.NodeKind.__members__["LayerNorm"].value + 1, width=1)


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_round_trip(case, tmp_path):
    layer = CASES[case][0]
    m = lp.Sequential(lp.Linear(4, 6), layer(), lp.Linear(6, 2), seed=0)
    m.compile(loss="mse", optimizer=lp.Adam(lr=0.01))
    X, y = make_batch(np.random.default_rng(0), 8, 4, 2, "mse", "float32")
    m.train_step(X, y)
    m.save(tmp_path / "m.safetensors")
    back = lp.load(tmp_path / "m.safetensors")
    assert back._seq_layers[1].describe() == m._seq_layers[1].describe()
    assert np.array_equal(back.predict(X), m.predict(X))
    assert back.train_step(X, y) == m.train_step(X, y)


@pytest.mark.parametrize("config,match", [
    ({"beta": -1.0, "threshold": 20.0}, "beta"),
    ({"beta": 1.0}, "threshold"),
    ({"beta": 1.0, "threshold": 20.0, "cmd": "ls"}, "unknown"),
    ({"beta": "1", "threshold": 20.0}, "beta"),
])
def test_bad_softplus_files_are_refused(tmp_path, config, match):
    import safetensors.numpy as st
    from safetensors import safe_open
    m = lp.Sequential(lp.Linear(4, 6), lp.Softplus(), lp.Linear(6, 2), seed=0)
    m.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["layerprop"])
    meta["model"]["layers"][1]["config"] = config
    st.save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"layerprop": json.dumps(meta)})
    with pytest.raises(ValueError, match=match):
        lp.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("case", list(CASES))
def test_from_torch_and_back(case):
    _, module, _, _ = CASES[case]
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), module(), torch.nn.Linear(5, 3)).double()
    m = lp.from_torch(net)
    X = np.random.default_rng(1).standard_normal((7, 4)) * 5
    assert_close(m.predict(X), net(torch.from_numpy(X)).detach().numpy(), 1e-12, case)
    again = m.to_torch()
    t = again[1]
    for attr in ("alpha", "beta", "threshold"):
        if hasattr(module(), attr):
            assert getattr(t, attr) == getattr(net[1], attr)


def test_from_torch_refuses_softplus_with_negative_beta():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Softplus(beta=-1.0))
    with pytest.raises(ValueError, match="beta"):
        lp.from_torch(net)


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_export_matches_predict(case, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = CASES[case][0]
    m = lp.Sequential(lp.Linear(10, 16), layer(), lp.Linear(16, 12), copy.deepcopy(layer()), lp.Linear(12, 4),
                      seed=1)
    X = (np.random.default_rng(0).standard_normal((64, 10)) * 3).astype(np.float32)
    m.to_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": X})[0]
    np.testing.assert_allclose(got, m.predict(X), rtol=1e-5, atol=1e-5)


def test_onnx_softplus_takes_both_branches(tmp_path):
    """Softplus(beta, threshold) in ONNX: the linear branch where beta x > threshold."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = lp.Sequential(lp.Linear(1, 1), lp.Softplus(beta=2.0, threshold=3.0), dtype="float64", seed=0)
    m.parameters()["0.weight"][...] = 1.0
    m.parameters()["0.bias"][...] = 0.0
    X = np.linspace(-5, 5, 101).reshape(-1, 1)
    m.to_onnx(tmp_path / "s.onnx")
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": X})[0]
    want = torch.nn.functional.softplus(torch.from_numpy(X), beta=2.0, threshold=3.0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.any(X * 2.0 > 3.0) and np.any(X * 2.0 <= 3.0)


@pytest.mark.parametrize("case", ["silu", "elu_alpha", "softplus_beta_threshold"])
@pytest.mark.parametrize("sched", [lp.Layerwise("top_down"), lp.LocoProp("M", inner_steps=3)], ids=repr)
def test_schedules_train_with_the_new_activations(case, sched):
    """The fused GEMM epilogue (LocoProp-M's transfer function) and the unfused kernels agree:
    the loss of the whole model goes down and stays finite; thread counts give the same bits."""
    layer = CASES[case][0]
    res = []
    for threads in (1, 2):
        before = lp.get_num_threads()
        lp.set_num_threads(threads)
        try:
            m = lp.Sequential(lp.Linear(6, 16), layer(), lp.Linear(16, 3), dtype="float64", seed=0)
            m.compile(loss="mse", optimizer=lp.RMSprop(lr=1e-2), schedule=copy.deepcopy(sched))
            X, y = make_batch(np.random.default_rng(0), 32, 6, 3, "mse")
            first = m.loss_and_grads(X, y)[0]
            for _ in range(20):
                m.train_step(X, y)
            res.append((first, m.loss_and_grads(X, y)[0], {k: v.copy() for k, v in m.parameters().items()}))
        finally:
            lp.set_num_threads(before)
    (f1, l1, p1), (_, l2, p2) = res
    assert np.isfinite(l1) and l1 < f1
    assert l1 == l2 and all(np.array_equal(p1[k], p2[k]) for k in p1)
