"""Shared fixtures and helpers for the layerprop test suite."""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

# Let test modules `import reference` / `from conftest import ...` whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity", "silu", "elu", "softplus"]
LOSSES = ["cross_entropy", "mse", "bce_with_logits"]
LEAKY_SLOPE = 0.2  # not the default, so a dropped argument shows
ELU_ALPHA = 0.7  # likewise
SOFTPLUS = (1.5, 2.0)  # beta, threshold: a low threshold, so both branches are taken


def rel_err(a, b):
    """Norm-style relative error: max|a - b| / max(max|b|, tiny)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def assert_close(a, b, tol, what=""):
    err = rel_err(a, b)
    assert err <= tol, f"{what}: rel_err {err:.3e} > {tol:.0e}"


def lp_activation(name):
    import layerprop as lp

    return {
        "relu": lp.ReLU,
        "leaky_relu": lambda: lp.LeakyReLU(negative_slope=LEAKY_SLOPE),
        "tanh": lp.Tanh,
        "sigmoid": lp.Sigmoid,
        "gelu": lp.GELU,
        "identity": lp.Identity,
        "silu": lp.SiLU,
        "elu": lambda: lp.ELU(alpha=ELU_ALPHA),
        "softplus": lambda: lp.Softplus(beta=SOFTPLUS[0], threshold=SOFTPLUS[1]),
    }[name]()


def ref_activation(name):
    """Activation spec for reference.MLP."""
    return {"leaky_relu": ("leaky_relu", LEAKY_SLOPE), "elu": ("elu", ELU_ALPHA),
            "softplus": ("softplus", SOFTPLUS)}.get(name, name)


def mlp_acts(n_linear, act, final_act=False):
    """Activation after each Linear: `act` between layers, and after the last iff final_act."""
    return [act] * (n_linear - 1) + [act if final_act else None]


def build_mlp(sizes, act, *, dtype="float64", seed=0, final_act=False):
    """lp.Sequential(Linear(sizes[0], sizes[1]), act, Linear(...), ...) and its act list."""
    import layerprop as lp

    acts = mlp_acts(len(sizes) - 1, act, final_act)
    layers = []
    for n_in, n_out, a in zip(sizes[:-1], sizes[1:], acts):
        layers.append(lp.Linear(n_in, n_out))
        if a is not None:
            layers.append(lp_activation(a))
    model = lp.Sequential(*layers, dtype=dtype, seed=seed)
    return model, [None if a is None else ref_activation(a) for a in acts]


def make_batch(rng, n, n_in, n_out, loss, dtype="float64"):
    """X (n, n_in) of `dtype`; y: int64 labels (n,) for cross_entropy, else (n, n_out) floats
    (targets in [0, 1] for bce_with_logits)."""
    X = rng.standard_normal((n, n_in)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n).astype(np.int64)
    elif loss == "mse":
        y = rng.standard_normal((n, n_out)).astype(dtype)
    elif loss == "bce_with_logits":
        y = rng.uniform(0.0, 1.0, size=(n, n_out)).astype(dtype)
    else:
        raise ValueError(loss)
    return X, y


def torch_loss(torch, name, out, y):
    """The PyTorch twin of a layerprop loss (mean reduction) on output `out` and NumPy target `y`."""
    F = torch.nn.functional
    y = torch.from_numpy(y)
    if name == "cross_entropy":
        return F.cross_entropy(out, y)
    if name == "mse":
        return F.mse_loss(out, y)
    return F.binary_cross_entropy_with_logits(out, y)


def copy_params(model):
    return {k: np.array(v, copy=True) for k, v in model.parameters().items()}


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's name: stable across runs and orderings."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# Optimizer configurations shared by the reference and PyTorch oracles:
# id -> (class name in layerprop / reference / torch.optim, keyword arguments).
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd_momentum_dampening_wd": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True)),
    "adam": ("Adam", dict(lr=0.01)),
    "adam_wd": ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05)),
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "rmsprop_centered_momentum_wd": ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.02,
                                                     momentum=0.5, centered=True)),
    "rmsprop_centered_small_alpha": ("RMSprop", dict(lr=0.005, alpha=0.3, centered=True)),
    "adagrad": ("Adagrad", dict(lr=0.05)),
    "adagrad_decay_wd_init": ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.02,
                                              initial_accumulator_value=0.1, eps=1e-8)),
}


def lp_optimizer(key):
    import layerprop as lp

    cls, kw = OPTIMIZERS[key]
    return getattr(lp, cls)(**kw)


def read_saved(path):
    """(tensors, parsed JSON header) of a file model.save wrote."""
    import json
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["layerprop"])
    return tensors, meta
