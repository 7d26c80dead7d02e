"""Graph models (skip connections, concat, shared weights, fan-out) against PyTorch in float64,
and the errors a graph reports when it is built."""

import numpy as np
import pytest

import layerprop as lp
from conftest import LOSSES, assert_close, make_batch, torch_loss

TOL = 1e-9


# Each case: build(lp) -> (inputs, outputs) of a float64 graph with named Linears, and
# forward(torch, P, x), the same graph written by hand with torch.nn.functional, reading the
# parameters P by layerprop's names.


def _lin(F, P, name, x):
    return F.linear(x, P[f"{name}.weight"], P.get(f"{name}.bias"))


def residual_build():
    x = lp.Input(5)
    h = lp.ReLU()(lp.Linear(5, 8, name="inp")(x))
    r1 = lp.add(h, lp.Tanh()(lp.Linear(8, 8, name="b1")(h)))
    r2 = lp.add(r1, lp.GELU()(lp.Linear(8, 8, name="b2")(r1)))
    return x, lp.Linear(8, 3, name="out")(r2)


def residual_forward(T, P, x):
    F = T.nn.functional
    h = F.relu(_lin(F, P, "inp", x))
    r1 = h + F.tanh(_lin(F, P, "b1", h))
    r2 = r1 + F.gelu(_lin(F, P, "b2", r1))
    return _lin(F, P, "out", r2)


def concat_build():
    x = lp.Input(4)
    a = lp.Tanh()(lp.Linear(4, 3, name="a")(x))
    b = lp.GELU()(lp.Linear(4, 5, name="b")(x))
    c = lp.concat([a, x, b])  # the input itself is a third branch
    return x, lp.Linear(12, 3, name="out")(lp.Sigmoid()(c))


def concat_forward(T, P, x):
    F = T.nn.functional
    a = F.tanh(_lin(F, P, "a", x))
    b = F.gelu(_lin(F, P, "b", x))
    return _lin(F, P, "out", F.sigmoid(T.cat([a, x, b], dim=1)))


def shared_build():
    x = lp.Input(4)
    h = lp.Sigmoid()(lp.Linear(4, 6, name="inp")(x))
    shared = lp.Linear(6, 6, name="shared")
    h2 = lp.LeakyReLU(0.2)(shared(h))
    h3 = lp.Tanh()(shared(h2))
    return x, lp.Linear(6, 3, name="out")(h3)


def shared_forward(T, P, x):
    F = T.nn.functional
    h = F.sigmoid(_lin(F, P, "inp", x))
    h2 = F.leaky_relu(_lin(F, P, "shared", h), 0.2)
    h3 = F.tanh(_lin(F, P, "shared", h2))
    return _lin(F, P, "out", h3)


def fanout_build():
    x = lp.Input(4)
    h = lp.ReLU()(lp.Linear(4, 6, name="inp")(x))
    a = lp.Linear(6, 5, name="a")(h)                               # consumer 1
    b = lp.Tanh()(lp.Linear(6, 5, bias=False, name="b")(h))        # consumer 2
    c = lp.concat([a, b, h])                                       # consumer 3
    return x, lp.Linear(16, 3, name="out")(c)


def fanout_forward(T, P, x):
    F = T.nn.functional
    h = F.relu(_lin(F, P, "inp", x))
    a = _lin(F, P, "a", h)
    b = F.tanh(_lin(F, P, "b", h))
    return _lin(F, P, "out", T.cat([a, b, h], dim=1))


def mixed_build():
    x = lp.Input(5)
    shared = lp.Linear(6, 6, name="shared")
    h = lp.GELU()(lp.Linear(5, 6, name="inp")(x))
    u = lp.Tanh()(shared(h))
    side = lp.LeakyReLU(0.1)(lp.Linear(6, 6, name="side")(h))
    r = lp.add(h, u, side)                    # h feeds shared, side and this add
    v = lp.ReLU()(shared(r))                  # the shared weight's second use
    skip = lp.Identity()(lp.Linear(5, 2, name="skip")(x))
    c = lp.concat([v, r, skip])
    return x, lp.Linear(14, 3, name="out")(c)


def mixed_forward(T, P, x):
    F = T.nn.functional
    h = F.gelu(_lin(F, P, "inp", x))
    u = F.tanh(_lin(F, P, "shared", h))
    side = F.leaky_relu(_lin(F, P, "side", h), 0.1)
    r = h + u + side
    v = F.relu(_lin(F, P, "shared", r))
    skip = _lin(F, P, "skip", x)
    return _lin(F, P, "out", T.cat([v, r, skip], dim=1))


CASES = {
    "residual": (residual_build, residual_forward),
    "concat": (concat_build, concat_forward),
    "shared": (shared_build, shared_forward),
    "fanout": (fanout_build, fanout_forward),
    "mixed": (mixed_build, mixed_forward),
}

EXPECTED_PARAMS = {
    "residual": ["inp.weight", "inp.bias", "b1.weight", "b1.bias", "b2.weight", "b2.bias",
                 "out.weight", "out.bias"],
    "concat": ["a.weight", "a.bias", "b.weight", "b.bias", "out.weight", "out.bias"],
    "shared": ["inp.weight", "inp.bias", "shared.weight", "shared.bias", "out.weight", "out.bias"],
    "fanout": ["inp.weight", "inp.bias", "a.weight", "a.bias", "b.weight", "out.weight", "out.bias"],
    "mixed": ["inp.weight", "inp.bias", "shared.weight", "shared.bias", "side.weight", "side.bias",
              "skip.weight", "skip.bias", "out.weight", "out.bias"],
}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def build(case, seed):
    x, out = CASES[case][0]()
    return lp.Model(inputs=x, outputs=out, dtype="float64", seed=seed)


def torch_params(torch, model):
    return {n: torch.tensor(np.array(p), dtype=torch.float64, requires_grad=True)
            for n, p in model.parameters().items()}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("case", list(CASES))
def test_graph_gradients_match_torch(case, loss, torch, rng):
    model = build(case, seed=int(rng.integers(2**31)))
    assert list(model.parameters()) == EXPECTED_PARAMS[case]
    model.compile(loss=loss, optimizer=lp.SGD(lr=0.1))
    X, y = make_batch(rng, 9, model.in_features, 3, loss)
    value, grads = model.loss_and_grads(X, y)

    P = torch_params(torch, model)
    out = CASES[case][1](torch, P, torch.from_numpy(X))
    assert_close(model.predict(X), out.detach().numpy(), TOL, f"{case}: outputs")
    tloss = torch_loss(torch, loss, out, y)
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=TOL)
    for name, p in P.items():
        assert np.any(p.grad.numpy() != 0), f"{case}: torch gradient of {name} is zero: vacuous"
        assert_close(grads[name], p.grad.numpy(), TOL, f"{case} {loss}: grad {name}")


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("case", list(CASES))
def test_graph_fit_matches_torch_adam(case, loss, torch, rng):
    """Two epochs of fit (batches 8, 8, 4, no shuffling: six Adam steps) against torch.optim.Adam
    on the same batches: every parameter and the epoch losses."""
    model = build(case, seed=int(rng.integers(2**31)))
    model.compile(loss=loss, optimizer=lp.Adam(lr=0.01))
    X, y = make_batch(rng, 20, model.in_features, 3, loss)
    P = torch_params(torch, model)
    before = {n: p.copy() for n, p in model.parameters().items()}

    hist = model.fit(X, y, epochs=2, batch_size=8, shuffle=False, progress=False)

    opt = torch.optim.Adam(list(P.values()), lr=0.01)
    epoch_losses = []
    for _ in range(2):
        total = 0.0
        for b0 in range(0, 20, 8):
            xb, yb = X[b0:b0 + 8], y[b0:b0 + 8]
            opt.zero_grad()
            tl = torch_loss(torch, loss, CASES[case][1](torch, P, torch.from_numpy(xb)), yb)
            tl.backward()
            opt.step()
            total += tl.item() * len(xb)
        epoch_losses.append(total / 20)

    assert hist.history["loss"] == pytest.approx(epoch_losses, rel=TOL)
    for name, p in model.parameters().items():
        assert not np.array_equal(p, before[name]), f"{case}: {name} did not train"
        assert_close(p, P[name].detach().numpy(), TOL, f"{case} {loss}: {name} after 6 Adam steps")


def test_shared_weight_gradient_sums_both_uses(rng):
    """A Linear used twice has one parameter whose gradient is the sum over both uses: the
    same graph with two separate (equal) Linears has gradients adding up to it."""
    x = lp.Input(3)
    shared = lp.Linear(3, 3, name="s")
    shared_model = lp.Model(inputs=x, outputs=lp.Linear(3, 2, name="o")(lp.Tanh()(shared(lp.Tanh()(shared(x))))),
                            dtype="float64", seed=1)
    x2 = lp.Input(3)
    split = lp.Model(inputs=x2, outputs=lp.Linear(3, 2, name="o")(lp.Tanh()(lp.Linear(3, 3, name="s2")(
        lp.Tanh()(lp.Linear(3, 3, name="s1")(x2))))), dtype="float64", seed=1)
    assert list(shared_model.parameters()) == ["s.weight", "s.bias", "o.weight", "o.bias"]
    sp = split.parameters()
    for part in ("s1", "s2"):
        for kind in ("weight", "bias"):
            sp[f"{part}.{kind}"][...] = shared_model.parameters()[f"s.{kind}"]
    for kind in ("weight", "bias"):
        sp[f"o.{kind}"][...] = shared_model.parameters()[f"o.{kind}"]
    X, y = make_batch(rng, 6, 3, 2, "mse")
    for m in (shared_model, split):
        m.compile(loss="mse")
    l1, g1 = shared_model.loss_and_grads(X, y)
    l2, g2 = split.loss_and_grads(X, y)
    assert l1 == pytest.approx(l2, rel=1e-14)
    for kind in ("weight", "bias"):
        assert_close(g1[f"s.{kind}"], g2[f"s1.{kind}"] + g2[f"s2.{kind}"], 1e-12, kind)
        assert not np.allclose(g1[f"s.{kind}"], g2[f"s1.{kind}"])  # both uses contribute


# ------------------------------------------------------------------ build errors name the layers


def test_add_width_mismatch_names_both_layers():
    x = lp.Input(3)
    a = lp.Linear(3, 4, name="enc")(x)
    b = lp.ReLU()(lp.Linear(3, 5, name="side")(x))
    with pytest.raises(ValueError, match=r"add: inputs must have equal widths, got \[4, 5\]") as e:
        lp.add(a, b)
    msg = str(e.value)
    assert "Linear(3, 4, name='enc') (width 4)" in msg
    assert "ReLU() on Linear(3, 5, name='side') (width 5)" in msg


def test_linear_input_width_mismatch_names_layer_and_source():
    x = lp.Input(3)
    c = lp.concat([lp.Linear(3, 4, name="a")(x), lp.Linear(3, 5, name="b")(x)])
    with pytest.raises(ValueError) as e:
        lp.Linear(4, 2, name="head")(c)
    msg = str(e.value)
    assert "Linear(4, 2, name='head'): expects 4 input features, gets 9" in msg
    assert "concat(Linear(3, 4, name='a'), Linear(3, 5, name='b'))" in msg


def test_shared_layer_reused_at_wrong_width_is_refused():
    x = lp.Input(4)
    shared = lp.Linear(4, 6, name="shared")
    h = shared(x)
    with pytest.raises(ValueError, match=r"Linear\(4, 6, name='shared'\): expects 4 input features, gets 6 "
                                         r"\(its input comes from Linear\(4, 6, name='shared'\)\)"):
        shared(h)


def test_output_not_reachable_from_input_names_it():
    x = lp.Input(3, name="x")
    z = lp.Input(2, name="z")
    lp.Linear(3, 3)(x)
    out = lp.Linear(2, 1, name="head")(z)
    with pytest.raises(ValueError, match=r"outputs: Linear\(2, 1, name='head'\) is not reachable from "
                                         r"inputs Input\(3, name='x'\) \(the input is never used\); "
                                         r"it depends on Input\(2, name='z'\)"):
        lp.Model(inputs=x, outputs=out)


def test_output_depending_on_a_second_input_names_it():
    x = lp.Input(3, name="x")
    z = lp.Input(2, name="z")
    out = lp.concat([lp.Linear(3, 2, name="a")(x), lp.Linear(2, 2, name="b")(z)])
    with pytest.raises(ValueError, match=r"concat\(Linear\(3, 2, name='a'\), Linear\(2, 2, name='b'\)\) "
                                         r"depends on Input\(2, name='z'\), an lp.Input other than "
                                         r"inputs Input\(3, name='x'\)"):
        lp.Model(inputs=x, outputs=out)
