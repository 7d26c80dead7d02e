"""Float64 NumPy twins of the core's operations: the slow, obviously correct definitions that
lp.explain computes with and the tests compare the core against.

Shapes follow the core: x (N,IN), w (OUT,IN), b (OUT) -> y (N,OUT). Everything computes in
float64, whatever dtype it is given. Each layer class (layerprop.layers) points at its twin
here (`Layer.reference_forward`, `reference_grad`)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np

__all__ = ["linear_forward", "linear_backward", "relu", "relu_grad", "leaky_relu", "leaky_relu_grad",
           "tanh", "tanh_grad", "sigmoid", "sigmoid_grad", "gelu", "gelu_grad", "identity",
           "identity_grad", "batchnorm_forward", "layernorm_forward", "softmax", "log_softmax",
           "cross_entropy", "mse", "bce_with_logits", "poisson_nll", "LOSSES", "loss"]


def _f64(x: object) -> np.ndarray:
    return np.asarray(x, np.float64)


# ---------------------------------------------------------------------------- Linear
def linear_forward(x: object, w: object, b: object = None) -> np.ndarray:
    """x (N,IN), w (OUT,IN), b (OUT) or None -> y (N,OUT)."""
    y = _f64(x) @ _f64(w).T
    if b is not None:
        y = y + _f64(b)
    return y


def linear_backward(dy: object, x: object, w: object) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dy (N,OUT), x (N,IN), w (OUT,IN) -> dx (N,IN), dw (OUT,IN), db (OUT)."""
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---------------------------------------------------------------------------- activations
# f(x) and f'(x), both of the pre-activation x.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def relu(x: object) -> np.ndarray:
    return np.maximum(_f64(x), 0.0)


def relu_grad(x: object) -> np.ndarray:
    return (_f64(x) > 0).astype(np.float64)


def leaky_relu(x: object, slope: float = 0.01) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, x, slope * x)


def leaky_relu_grad(x: object, slope: float = 0.01) -> np.ndarray:
    return np.where(_f64(x) > 0, 1.0, slope)


def tanh(x: object) -> np.ndarray:
    return np.tanh(_f64(x))


def tanh_grad(x: object) -> np.ndarray:
    return 1.0 - np.tanh(_f64(x)) ** 2


def sigmoid(x: object) -> np.ndarray:
    x = _f64(x)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_grad(x: object) -> np.ndarray:
    s = sigmoid(x)
    return s * (1.0 - s)


def gelu(x: object) -> np.ndarray:
    """x * Phi(x), the exact erf form."""
    x = _f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_grad(x: object) -> np.ndarray:
    x = _f64(x)
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def silu(x: object) -> np.ndarray:
    x = _f64(x)
    return x * sigmoid(x)


def silu_grad(x: object) -> np.ndarray:
    x = _f64(x)
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def elu(x: object, alpha: float = 1.0) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def elu_grad(x: object, alpha: float = 1.0) -> np.ndarray:
    x = _f64(x)
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def softplus(x: object, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    """log(1 + exp(beta x)) / beta, and x where beta x > threshold (PyTorch's rule)."""
    x = _f64(x)
    return np.where(beta * x > threshold, x, np.logaddexp(0.0, beta * x) / beta)


def softplus_grad(x: object, beta: float = 1.0, threshold: float = 20.0) -> np.ndarray:
    x = _f64(x)
    return np.where(beta * x > threshold, 1.0, sigmoid(beta * x))


def identity(x: object) -> np.ndarray:
    return _f64(x).copy()


def identity_grad(x: object) -> np.ndarray:
    return np.ones_like(_f64(x))


# ---------------------------------------------------------------------------- normalization
def batchnorm_forward(x: object, eps: float, weight: object = None, bias: object = None,
                      running_mean: object = None, running_var: object = None) -> np.ndarray:
    """Batch normalization of (N, C): batch mean and biased variance, or the running
    statistics when given (inference); then weight * x + bias when weight is given."""
    x = _f64(x)
    if running_mean is None:
        mean, var = x.mean(axis=0), x.var(axis=0)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
    out = (x - mean) / np.sqrt(var + eps)
    return out if weight is None else out * _f64(weight) + _f64(bias)


def layernorm_forward(x: object, eps: float, weight: object = None, bias: object = None) -> np.ndarray:
    """Each row normalized over its features (biased variance), then weight * x + bias."""
    x = _f64(x)
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    out = (x - mean) / np.sqrt(var + eps)
    return out if weight is None else out * _f64(weight) + _f64(bias)


# ---------------------------------------------------------------------------- losses
def log_softmax(z: object) -> np.ndarray:
    """Row-wise log softmax of (N, C) logits, stable."""
    z = _f64(z)
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def softmax(z: object) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, stable (rows sum to 1)."""
    z = _f64(z)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# Each loss: (mean loss, d loss / dz) of outputs z against targets.
def cross_entropy(z: object, labels: object) -> Tuple[float, np.ndarray]:
    """z (N,C) logits, labels (N,) integers in [0, C); mean over N."""
    lsm = log_softmax(z)
    n = lsm.shape[0]
    idx = np.asarray(labels).astype(np.int64)
    value = -lsm[np.arange(n), idx].mean()
    grad = np.exp(lsm)
    grad[np.arange(n), idx] -= 1.0
    return float(value), grad / n


def mse(z: object, t: object) -> Tuple[float, np.ndarray]:
    """Mean over all elements of (z - t)^2."""
    d = _f64(z) - _f64(t)
    return float(np.mean(d * d)), 2.0 * d / d.size


def bce_with_logits(z: object, t: object) -> Tuple[float, np.ndarray]:
    """Mean over all elements of -[t log s(z) + (1-t) log(1-s(z))], stable form."""
    z, t = _f64(z), _f64(t)
    per = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return float(per.mean()), (sigmoid(z) - t) / z.size


def poisson_nll(z: object, t: object) -> Tuple[float, np.ndarray]:
    """PyTorch's PoissonNLLLoss(log_input=True): mean over all elements of exp(z) - t z."""
    z, t = _f64(z), _f64(t)
    return float(np.mean(np.exp(z) - t * z)), (np.exp(z) - t) / z.size


LOSSES: Dict[str, Callable[[object, object], Tuple[float, np.ndarray]]] = {
    "cross_entropy": cross_entropy, "mse": mse, "bce_with_logits": bce_with_logits, "poisson": poisson_nll}


def loss(name: str, z: object, y: object) -> Tuple[float, np.ndarray]:
    """(mean loss, d loss / dz) of the loss `name`; float targets are reshaped to z's shape."""
    if name != "cross_entropy":
        y = _f64(y).reshape(_f64(z).shape)
    return LOSSES[name](z, y)
