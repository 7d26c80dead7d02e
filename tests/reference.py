"""Float64 NumPy twins of every op in layerprop: the slow, obviously-correct oracle.

Shapes follow the core: x (N,IN), w (OUT,IN), b (OUT) -> y (N,OUT).
Everything here computes in float64, whatever dtype it is given.
"""

from __future__ import annotations

import math

import numpy as np

# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------


def linear_forward(x, w, b=None):
    """x (N,IN), w (OUT,IN), b (OUT) or None -> y (N,OUT)."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def linear_backward(dy, x, w):
    """dy (N,OUT), x (N,IN), w (OUT,IN) -> dx (N,IN), dw (OUT,IN), db (OUT)."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---------------------------------------------------------------------------
# Activations: forward f(x) and derivative f'(x), both of the pre-activation x
# ---------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def sigmoid(x):
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _parse(spec):
    """An activation spec is a name or (name, kwargs-value), e.g. ("leaky_relu", 0.2),
    ("elu", 0.5) (alpha) or ("softplus", (2.0, 5.0)) (beta, threshold)."""
    if isinstance(spec, tuple):
        name, arg = spec
        return name, arg
    return spec, None


def activation(spec, x):
    name, arg = _parse(spec)
    x = np.asarray(x, np.float64)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "leaky_relu":
        slope = 0.01 if arg is None else arg
        return np.where(x > 0, x, slope * x)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "silu":
        return x * sigmoid(x)
    if name == "elu":
        alpha = 1.0 if arg is None else arg
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))
    if name == "softplus":
        beta, threshold = (1.0, 20.0) if arg is None else arg
        return np.where(beta * x > threshold, x, np.logaddexp(0.0, beta * x) / beta)
    if name == "identity":
        return x.copy()
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(spec, x):
    """Elementwise derivative f'(x) at the pre-activation x."""
    name, arg = _parse(spec)
    x = np.asarray(x, np.float64)
    if name == "relu":
        return (x > 0).astype(np.float64)
    if name == "leaky_relu":
        slope = 0.01 if arg is None else arg
        return np.where(x > 0, 1.0, slope)
    if name == "tanh":
        return 1.0 - np.tanh(x) ** 2
    if name == "sigmoid":
        s = sigmoid(x)
        return s * (1.0 - s)
    if name == "gelu":
        cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return cdf + x * pdf
    if name == "silu":
        s = sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "elu":
        alpha = 1.0 if arg is None else arg
        return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))
    if name == "softplus":
        beta, threshold = (1.0, 20.0) if arg is None else arg
        return np.where(beta * x > threshold, 1.0, sigmoid(beta * x))
    if name == "identity":
        return np.ones_like(x)
    raise ValueError(f"unknown activation {name!r}")


# ---------------------------------------------------------------------------
# Losses: (loss, dloss/dz) where z are the model outputs (logits / predictions)
# ---------------------------------------------------------------------------


def log_softmax(z):
    z = np.asarray(z, np.float64)
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def cross_entropy(z, labels):
    """z (N,C) logits, labels (N,) integers in [0, C); mean over N."""
    lsm = log_softmax(z)
    n = lsm.shape[0]
    labels = np.asarray(labels).astype(np.int64)
    loss = -lsm[np.arange(n), labels].mean()
    grad = np.exp(lsm)
    grad[np.arange(n), labels] -= 1.0
    return float(loss), grad / n


def mse(z, t):
    """Mean over all elements of (z - t)^2."""
    d = np.asarray(z, np.float64) - np.asarray(t, np.float64)
    return float(np.mean(d * d)), 2.0 * d / d.size


def bce_with_logits(z, t):
    """Mean over all elements of -[t log s(z) + (1-t) log(1-s(z))], stable form."""
    z = np.asarray(z, np.float64)
    t = np.asarray(t, np.float64)
    per = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return float(per.mean()), (sigmoid(z) - t) / z.size


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
