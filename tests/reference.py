"""Float64 NumPy twins of every op in layerprop: the slow, obviously-correct oracle.

Shapes follow the core: x (N,IN), w (OUT,IN), b (OUT) -> y (N,OUT).
Everything here computes in float64, whatever dtype it is given.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------
# Linear, activations and losses: the package's float64 twins (layerprop.reference), which
# lp.explain computes with too. An activation spec here is a name or (name, argument).
# ---------------------------------------------------------------------------

from layerprop.reference import (bce_with_logits, cross_entropy, linear_backward, linear_forward,  # noqa: E402,F401
                                 log_softmax, mse, sigmoid)
from layerprop import reference as _twin  # noqa: E402

_ACTS = {  # name -> (f, f')
    "relu": (_twin.relu, _twin.relu_grad),
    "leaky_relu": (_twin.leaky_relu, _twin.leaky_relu_grad),
    "tanh": (_twin.tanh, _twin.tanh_grad),
    "sigmoid": (_twin.sigmoid, _twin.sigmoid_grad),
    "gelu": (_twin.gelu, _twin.gelu_grad),
    "silu": (_twin.silu, _twin.silu_grad),
    "elu": (_twin.elu, _twin.elu_grad),
    "softplus": (_twin.softplus, _twin.softplus_grad),
    "identity": (_twin.identity, _twin.identity_grad),
}


def _parse(spec):
    """An activation spec is a name or (name, kwargs-value), e.g. ("leaky_relu", 0.2),
    ("elu", 0.5) (alpha) or ("softplus", (2.0, 5.0)) (beta, threshold)."""
    if isinstance(spec, tuple):
        name, arg = spec
        return name, arg
    return spec, None


def _act(spec, which):
    name, arg = _parse(spec)
    if name not in _ACTS:
        raise ValueError(f"unknown activation {name!r}")
    fn = _ACTS[name][which]
    if name == "leaky_relu":
        return lambda x: fn(x, 0.01 if arg is None else arg)
    if name == "elu":
        return lambda x: fn(x, 1.0 if arg is None else arg)
    if name == "softplus":
        return lambda x: fn(x, *((1.0, 20.0) if arg is None else arg))
    return fn


def activation(spec, x):
    return _act(spec, 0)(x)


def activation_grad(spec, x):
    """Elementwise derivative f'(x) at the pre-activation x."""
    return _act(spec, 1)(x)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse, "bce_with_logits": bce_with_logits}


def loss(name, z, y):
    return LOSSES[name](z, y)


# ---------------------------------------------------------------------------
# Optimizers: PyTorch's update rules (torch.optim, single-tensor path), in place
# ---------------------------------------------------------------------------


class SGD:
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self.buf = {}

    def step(self, params, grads):
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                if name not in self.buf:
                    self.buf[name] = g.copy()  # first step: no dampening, like torch
                else:
                    self.buf[name] = self.momentum * self.buf[name] + (1.0 - self.dampening) * g
                g = g + self.momentum * self.buf[name] if self.nesterov else self.buf[name]
            p -= self.lr * g


class Adam:
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, params, grads):
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            if self.weight_decay:
                if self.decoupled:
                    p *= 1.0 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p
            m = self.m.setdefault(name, np.zeros_like(p))
            v = self.v.setdefault(name, np.zeros_like(p))
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            denom = np.sqrt(v) / math.sqrt(bc2) + self.eps
            p -= (self.lr / bc1) * m / denom


class AdamW(Adam):
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay)


# ---------------------------------------------------------------------------
# A tiny MLP: list of (W, b, activation-or-None), named like a torch Sequential
# ---------------------------------------------------------------------------


class MLP:
    """layers: list of (W (OUT,IN), b (OUT) or None, activation spec or None).

    Parameter names follow PyTorch's state_dict of the matching nn.Sequential, in which
    every activation takes an index too: Linear, act, Linear -> "0.*", "2.*".
    """

    def __init__(self, layers):
        self.layers = []
        self.names = []  # (weight name, bias name or None) per Linear
        idx = 0
        for w, b, act in layers:
            w = np.array(w, dtype=np.float64)
            b = None if b is None else np.array(b, dtype=np.float64)
            self.layers.append((w, b, act))
            self.names.append((f"{idx}.weight", None if b is None else f"{idx}.bias"))
            idx += 1 if act is None else 2

    @classmethod
    def from_params(cls, params, acts):
        """params: dict in Sequential order ("0.weight", "0.bias", ...); acts: one spec per
        Linear (None for no activation after it)."""
        layers, idx = [], 0
        for act in acts:
            w = params[f"{idx}.weight"]
            b = params.get(f"{idx}.bias")
            layers.append((w, b, act))
            idx += 1 if act is None else 2
        return cls(layers)

    def params(self):
        """name -> the (mutable) float64 array used by this model."""
        out = {}
        for (w, b, _), (wn, bn) in zip(self.layers, self.names):
            out[wn] = w
            if b is not None:
                out[bn] = b
        return out

    def forward(self, x, keep=False):
        h = np.asarray(x, np.float64)
        cache = []
        for w, b, act in self.layers:
            z = linear_forward(h, w, b)
            cache.append((h, z))
            h = z if act is None else activation(act, z)
        return (h, cache) if keep else h

    def loss_and_grads(self, x, y, loss_name):
        out, cache = self.forward(x, keep=True)
        value, d = loss(loss_name, out, y)
        grads = {}
        for (w, b, act), (wn, bn), (h, z) in reversed(list(zip(self.layers, self.names, cache))):
            if act is not None:
                d = d * activation_grad(act, z)
            d, dw, db = linear_backward(d, h, w)
            grads[wn] = dw
            if bn is not None:
                grads[bn] = db
        return value, {k: grads[k] for k in self.params()}

    def step(self, optimizer, grads):
        optimizer.step(self.params(), grads)

    def train_step(self, x, y, loss_name, optimizer):
        value, grads = self.loss_and_grads(x, y, loss_name)
        self.step(optimizer, grads)
        return value


class RMSprop:
    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered
        self.sq, self.gavg, self.buf = {}, {}, {}

    def step(self, params, grads):
        a = self.alpha
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            if self.weight_decay:
                g = g + self.weight_decay * p
            sq = self.sq.setdefault(name, np.zeros_like(p))
            sq[...] = a * sq + (1.0 - a) * g * g
            if self.centered:
                ga = self.gavg.setdefault(name, np.zeros_like(p))
                ga[...] = a * ga + (1.0 - a) * g
                avg = np.sqrt(sq - ga * ga) + self.eps
            else:
                avg = np.sqrt(sq) + self.eps
            if self.momentum > 0:
                buf = self.buf.setdefault(name, np.zeros_like(p))
                buf[...] = self.momentum * buf + g / avg
                p -= self.lr * buf
            else:
                p -= self.lr * g / avg


class Adagrad:
    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.init, self.eps = initial_accumulator_value, eps
        self.sum, self.t = {}, {}

    def step(self, params, grads):
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            if self.weight_decay:
                g = g + self.weight_decay * p
            self.t[name] = self.t.get(name, 0) + 1
            clr = self.lr / (1.0 + (self.t[name] - 1) * self.lr_decay)
            s = self.sum.setdefault(name, np.full_like(p, self.init))
            s += g * g
            p -= clr * g / (np.sqrt(s) + self.eps)

