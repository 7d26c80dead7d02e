"""The cases: our models and data, their PyTorch twins (and the onnxruntime and scikit-learn
peers), as callables the harness times and the benchmark suites run."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .specs import (DIGITS_BATCH, DIGITS_SIZES, MODELS, OPTIMIZERS, ModelSpec, _torch_or_none, infer_flops, train_flops)


# --------------------------------------------------------------------------------------------
# Models, their PyTorch twins, data.

def build_model(sizes: Sequence[int], loss: Optional[str] = None, optimizer: Optional[str] = None,
                seed: int = 0):
    """lp.Sequential(Linear, ReLU, ..., Linear), float32, compiled if `loss` is given."""
    import layerprop as lp
    layers: List[Any] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(lp.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(lp.ReLU())
    model = lp.Sequential(*layers, seed=seed)
    if loss is not None:
        cls, kw = OPTIMIZERS[optimizer or "sgd"]
        model.compile(loss=loss, optimizer=getattr(lp, cls)(**kw))
    return model


def torch_twin(model, sizes: Sequence[int]):
    """The same nn.Sequential with `model`'s current parameters, or None without PyTorch."""
    torch = _torch_or_none()
    if torch is None:
        return None
    nn = torch.nn
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    params = model.parameters()
    if list(net.state_dict()) != list(params):
        raise RuntimeError(f"parameter names differ from torch's: {list(params)} vs {list(net.state_dict())}")
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[name])))
    return net


def batch(spec: ModelSpec, seed: int = 0, rows: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs and targets (class labels for cross-entropy) for `spec`: one batch,
    or `rows` rows."""
    n = spec.batch if rows is None else rows
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, spec.sizes[0]), dtype=np.float32)
    y: np.ndarray
    if spec.loss == "cross_entropy":
        y = rng.integers(0, spec.sizes[-1], size=n).astype(np.int64)
    else:
        y = rng.standard_normal((n, spec.sizes[-1]), dtype=np.float32)
    return X, y


@dataclass
class TrainCase:
    """One training step of a reference model, ours and (if PyTorch is installed) its twin,
    both starting from the same parameters on the same batch."""
    spec: ModelSpec
    model: object
    X: np.ndarray
    y: np.ndarray
    ours: Callable[[], float]
    peer: Optional[Callable[[], float]] = None
    net: object = None

    @property
    def flops(self) -> float:
        return train_flops(self.spec)


def train_case(key: str, seed: int = 0, with_peer: bool = True) -> TrainCase:
    """The step functions of reference model `key` ("T1", "T32", "S", "M", "L"); each returns
    the loss before its update."""
    spec = MODELS[key]
    model = build_model(spec.sizes, spec.loss, spec.optimizer, seed=seed)
    X, y = batch(spec, seed)

    def ours() -> float:
        return model.train_step(X, y)

    case = TrainCase(spec, model, X, y, ours)
    net = torch_twin(model, spec.sizes) if with_peer else None
    if net is not None:
        import torch
        F = torch.nn.functional
        cls, kw = OPTIMIZERS[spec.optimizer]
        opt = getattr(torch.optim, cls)(net.parameters(), **kw)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = F.cross_entropy if spec.loss == "cross_entropy" else F.mse_loss

        def peer() -> float:
            opt.zero_grad()
            loss = loss_fn(net(Xt), yt)
            loss.backward()
            opt.step()
            return loss.item()

        case.peer, case.net = peer, net
    return case


@dataclass
class InferCase:
    """Batch-1 prediction of a reference model, ours and (if PyTorch is installed) its twin's
    under torch.no_grad(); both return a NumPy array."""
    sizes: Tuple[int, ...]
    model: object
    x: np.ndarray
    ours: Callable[[], np.ndarray]
    peer: Optional[Callable[[], np.ndarray]] = None

    @property
    def flops(self) -> float:
        return infer_flops(self.sizes)


def infer_case(key: str, seed: int = 0, with_peer: bool = True) -> InferCase:
    """Batch-1 prediction of reference model "T" or "M"."""
    sizes = MODELS["T1" if key == "T" else key].sizes
    model = build_model(sizes, seed=seed)
    x = np.random.default_rng(seed).standard_normal((1, sizes[0]), dtype=np.float32)

    def ours() -> np.ndarray:
        return model.predict(x)

    case = InferCase(sizes, model, x, ours)
    net = torch_twin(model, sizes) if with_peer else None
    if net is not None:
        import torch
        xt = torch.from_numpy(x)

        def peer() -> np.ndarray:
            with torch.no_grad():
                return net(xt).numpy()

        case.peer = peer
    return case


def gemm_reference(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool) -> np.ndarray:
    """op(a) @ op(b) in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)


def gemm_calls(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool):
    """{"layerprop": ..., "numpy": ..., "torch.mm": ...} callables computing op(a) @ op(b);
    torch.mm only when PyTorch is installed. Transposes are views, never copies."""
    from layerprop import _core
    calls: Dict[str, Callable[[], object]] = {
        "layerprop": lambda: _core._gemm(a, b, trans_a, trans_b),
        "numpy": lambda: np.matmul(a.T if trans_a else a, b.T if trans_b else b),
    }
    torch = _torch_or_none()
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        at, bt = (at.t() if trans_a else at), (bt.t() if trans_b else bt)
        calls["torch.mm"] = lambda: torch.mm(at, bt)
    return calls


def digits_data():
    """scikit-learn's 8x8 digits (1797 images, pixels / 16, float32) or None without it."""
    from ..datasets import load_digits
    return load_digits(np.float32)




def digits_flops(n: int) -> float:
    spec = ModelSpec("digits", DIGITS_SIZES, "cross_entropy", "adam", n)
    return train_flops(spec)


def digits_case(seed: int = 0, with_peer: bool = True):
    """One epoch of fit on digits: 64-128-10 ReLU, cross-entropy, Adam lr 1e-3, batch 32,
    shuffled. Returns (ours, peer or None, X, y, ours_model, sklearn_estimator or None);
    ours() returns the epoch's mean loss, peer() sklearn's. Without scikit-learn the data are
    random with the digits' shape and there is no peer."""
    data = digits_data()
    if data is None:
        rng = np.random.default_rng(seed)
        X = rng.random((1797, 64), dtype=np.float32)
        y = rng.integers(0, 10, size=1797).astype(np.int64)
    else:
        X, y = data
    model = build_model(DIGITS_SIZES, "cross_entropy", "adam", seed=seed)

    def ours() -> float:
        return model.fit(X, y, epochs=1, batch_size=DIGITS_BATCH, progress=False).history["loss"][-1]

    peer = est = None
    if with_peer and data is not None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        # Same network and optimizer; no L2 penalty (alpha=0) as ours has none; max_iter=1 with
        # warm_start makes each fit() one more epoch. tol and n_iter_no_change never act in one
        # epoch, but every fit() warns that max_iter was reached: that warning is expected here.
        est = MLPClassifier(hidden_layer_sizes=(DIGITS_SIZES[1],), activation="relu", solver="adam",
                            alpha=0.0, batch_size=DIGITS_BATCH, learning_rate_init=1e-3, max_iter=1,
                            shuffle=True, warm_start=True, random_state=seed)

        def peer() -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(X, y)
            return float(est.loss_curve_[-1])

    return ours, peer, X, y, model, est


def onnx_peer(model: object, x: np.ndarray, threads: int) -> Optional[Callable[[], np.ndarray]]:
    """onnxruntime running `model.to_onnx`'s graph on x with `threads` intra-op threads (None
    without the onnx extra): what deployers run for inference."""
    try:
        import onnxruntime as ort
        from ..export import model_proto
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Its workers would otherwise spin between runs and take the cores from the case timed
    # next (A/B interleaving): both sides are then measured on idle cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"X": x}
    return lambda: sess.run(None, feed)[0]
