"""Hypothesis strategies for tests/test_fuzz.py: small models in every configuration, and the
data a user may hand them -- good, odd but acceptable, or invalid.

Every generated argument carries what the test may expect of it:

- ``must``: argument names that are certainly invalid (NaN/Inf, wrong ndim or feature count,
  labels out of range or negative, float labels with a fraction, 0-d labels, rows that do not
  match X, complex data, ...): the call has to refuse them.
- ``maybe``: argument names the call may refuse or accept (a dtype the model does not take
  as it is: bool, int8/int32/int64, float16, object; 0 rows for predict; a single row for
  BatchNorm1d in training mode, ...).
- neither: the argument is valid (whatever its layout: Fortran order, strided views,
  read-only, Python lists); refusing it is a failure too.

Values are drawn by NumPy from a seed that hypothesis draws (fast; hypothesis still shrinks
the structure of the case: sizes, dtypes, layouts, mutations).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import warnings

import numpy as np
from hypothesis import strategies as st

import layerprop as lp

LOSSES = ("cross_entropy", "mse", "bce_with_logits")
OPTIMIZERS = ("sgd", "sgd_momentum", "adam")
SCHEDULES = ("simultaneous", "layerwise_top_down", "layerwise_bottom_up", "locoprop_S", "locoprop_M")
LAYOUTS = ("C", "C", "C", "F", "strided_rows", "strided_cols", "negative_stride", "list")


# ------------------------------------------------------------------------------- models
@dataclass
class ModelConfig:
    dtype: str = "float32"
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    schedule: str = "simultaneous"
    batchnorm: bool = False
    dropout: bool = False
    activation: str = "relu"
    n_in: int = 3
    hidden: int = 4
    n_out: int = 3
    seed: int = 0
    compiled: bool = True
    warmup: int = 0          # valid train_steps before the fuzzed call (optimizer state, BN stats)
    training: bool = True    # model.train() or model.eval()

    def build(self) -> lp.Sequential:
        layers: List[Any] = [lp.Linear(self.n_in, self.hidden)]
        if self.batchnorm:
            layers.append(lp.BatchNorm1d(self.hidden))
        layers.append(lp.ReLU() if self.activation == "relu" else lp.Tanh())
        if self.dropout:
            layers.append(lp.Dropout(0.5))
        layers.append(lp.Linear(self.hidden, self.n_out))
        model = lp.Sequential(*layers, dtype=self.dtype, seed=self.seed)
        if self.compiled:
            with warnings.catch_warnings():  # LocoProp M before a norm layer or Dropout: documented
                warnings.filterwarnings("ignore", message=r"LocoProp\('M'\)")
                model.compile(loss=self.loss, optimizer=make_optimizer(self.optimizer),
                              schedule=make_schedule(self.schedule))
            rng = np.random.default_rng(self.seed)
            for _ in range(self.warmup):
                X, y = good_batch(rng, self, 4)
                model.train_step(X, y)
        if not self.training:
            model.eval()
        return model

    def code(self) -> str:
        """Python that builds this model (for reproducers)."""
        layers = [f"lp.Linear({self.n_in}, {self.hidden})"]
        if self.batchnorm:
            layers.append(f"lp.BatchNorm1d({self.hidden})")
        layers.append("lp.ReLU()" if self.activation == "relu" else "lp.Tanh()")
        if self.dropout:
            layers.append("lp.Dropout(0.5)")
        layers.append(f"lp.Linear({self.hidden}, {self.n_out})")
        s = f"model = lp.Sequential({', '.join(layers)}, dtype={self.dtype!r}, seed={self.seed})"
        if self.compiled:
            s += (f"\nmodel.compile(loss={self.loss!r}, optimizer={OPT_CODE[self.optimizer]}, "
                  f"schedule={SCHED_CODE[self.schedule]})")
            if self.warmup:
                s += f"\n# + {self.warmup} valid train_step(s) of 4 rows"
        if not self.training:
            s += "\nmodel.eval()"
        return s


OPT_CODE = {"sgd": "lp.SGD(lr=0.01)", "sgd_momentum": "lp.SGD(lr=0.01, momentum=0.9)",
            "adam": "lp.Adam(lr=0.01)"}
SCHED_CODE = {"simultaneous": "lp.Simultaneous()", "layerwise_top_down": "lp.Layerwise('top_down')",
              "layerwise_bottom_up": "lp.Layerwise('bottom_up')",
              "locoprop_S": "lp.LocoProp('S', inner_steps=2)", "locoprop_M": "lp.LocoProp('M', inner_steps=2)"}


def make_optimizer(name: str) -> Any:
    if name == "sgd":
        return lp.SGD(lr=0.01)
    if name == "sgd_momentum":
        return lp.SGD(lr=0.01, momentum=0.9)
    return lp.Adam(lr=0.01)


def make_schedule(name: str) -> Any:
    if name == "simultaneous":
        return lp.Simultaneous()
    if name.startswith("layerwise"):
        return lp.Layerwise(name[len("layerwise_"):])
    return lp.LocoProp(name[-1], inner_steps=2)


def good_batch(rng: np.random.Generator, cfg: ModelConfig, n: int) -> Tuple[np.ndarray, np.ndarray]:
    X = rng.standard_normal((n, cfg.n_in)).astype(cfg.dtype)
    if cfg.loss == "cross_entropy":
        y = rng.integers(0, cfg.n_out, size=n).astype(np.int64)
    elif cfg.loss == "mse":
        y = rng.standard_normal((n, cfg.n_out)).astype(cfg.dtype)
    else:
        y = rng.uniform(0.0, 1.0, (n, cfg.n_out)).astype(cfg.dtype)
    return X, y


@st.composite
def model_configs(draw: Callable, *, small: bool = False, compiled: Optional[bool] = True,
                  allow_norm: bool = True, allow_schedules: bool = True) -> ModelConfig:
    """compiled=None: sometimes not compiled (calls before compile)."""
    top = 3 if small else 5
    return ModelConfig(
        dtype=draw(st.sampled_from(("float32", "float64"))),
        loss=draw(st.sampled_from(LOSSES)),
        optimizer=draw(st.sampled_from(OPTIMIZERS)),
        schedule=draw(st.sampled_from(SCHEDULES)) if allow_schedules else "simultaneous",
        batchnorm=draw(st.booleans()) if allow_norm else False,
        dropout=draw(st.booleans()),
        activation=draw(st.sampled_from(("relu", "tanh"))),
        n_in=draw(st.integers(1, top - 1 if small else 4)),
        hidden=draw(st.integers(1, top)),
        n_out=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
        compiled=draw(st.integers(0, 7)) > 0 if compiled is None else compiled,
        warmup=draw(st.integers(0, 2)),
        training=draw(st.integers(0, 3)) > 0,
    )


# ------------------------------------------------------------------------------- data
@dataclass
class Arg:
    """One generated argument value and what the call may do with it."""

    value: Any
    desc: str
    must: FrozenSet[str] = frozenset()
    maybe: FrozenSet[str] = frozenset()


@dataclass
class Case:
    """(X, y) for one call; `names` maps the generator's X/y to the call's argument name."""

    X: Arg
    y: Arg
    n: int
    extra: List[Arg] = field(default_factory=list)

    @property
    def must(self) -> FrozenSet[str]:
        out: FrozenSet[str] = frozenset()
        for a in (self.X, self.y, *self.extra):
            out |= a.must
        return out

    @property
    def maybe(self) -> FrozenSet[str]:
        out: FrozenSet[str] = frozenset()
        for a in (self.X, self.y, *self.extra):
            out |= a.maybe
        return out

    def describe(self) -> str:
        return "; ".join([f"X={self.X.desc}", f"y={self.y.desc}", *(a.desc for a in self.extra)])


def _strided(arr: np.ndarray, axis: int) -> np.ndarray:
    shape = list(arr.shape)
    shape[axis] *= 2
    big = np.zeros(shape, dtype=arr.dtype)
    sl: List[Any] = [slice(None)] * arr.ndim
    sl[axis] = slice(None, None, 2)
    big[tuple(sl)] = arr
    return big[tuple(sl)]


def apply_layout(arr: np.ndarray, layout: str, readonly: bool) -> Tuple[Any, str]:
    """The same values in another memory layout (or as nested Python lists)."""
    if layout == "list":
        return arr.tolist(), "list"
    if arr.ndim == 0:
        out = arr.copy()
        layout = "C"
    elif layout == "F":
        out = np.asfortranarray(arr)
    elif layout == "strided_rows":
        out = _strided(arr, 0)
    elif layout == "strided_cols":
        out = _strided(arr, arr.ndim - 1)
    elif layout == "negative_stride":
        out = np.ascontiguousarray(arr[::-1])[::-1]
    else:
        out = np.array(arr, copy=True, order="C")
    if readonly:
        out.flags.writeable = False
    return out, layout + (",readonly" if readonly else "")


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return values > 0
    if dtype in ("int8", "int32", "int64"):
        return np.round(values * 3).astype(dtype)
    if dtype == "object":
        return values.astype(object)
    return values.astype(dtype)


X_KINDS = ("ok",) * 6 + ("float64", "bool", "int8", "int32", "int64", "float16", "float32",
                         "object", "complex64", "complex128", "nan", "inf", "-inf", "1d", "3d",
                         "features", "0d", "scalar", "sparse", "sparse", "sparse_nan", "sparse_int",
                         "sparse_features")


@st.composite
def x_args(draw: Callable, cfg: ModelConfig, n: int, name: str = "X",
           kinds: Tuple[str, ...] = X_KINDS) -> Arg:
    """An X of n rows for cfg's model; `name` is the argument it lands in."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((1.0, 1.0, 0.01, 10.0)))
    base = rng.standard_normal((n, cfg.n_in)) * scale
    kind = draw(st.sampled_from(kinds))
    must: set = set()
    maybe: set = set()
    if kind.startswith("sparse"):  # scipy.sparse X in any format
        import scipy.sparse as sp
        fmt = draw(st.sampled_from(("csr", "csc", "coo", "lil", "dok", "bsr")))
        dense = np.where(rng.random(base.shape) < 0.5, base, 0.0).astype(cfg.dtype)
        if kind == "sparse_features":
            k = draw(st.integers(1, cfg.n_in + 3).filter(lambda k: k != cfg.n_in))
            dense = np.ones((n, k), dtype=cfg.dtype)
            must.add(name)
        elif kind == "sparse_nan" and n:
            dense[draw(st.integers(0, n - 1)), draw(st.integers(0, cfg.n_in - 1))] = np.nan
            must.add(name)
        elif kind == "sparse_int":
            dense = (dense * 3).astype(np.int64)
            maybe.add(name)
        value = sp.csr_matrix(dense).asformat(fmt)
        return Arg(value, f"{kind} {fmt} {dense.dtype} {dense.shape}", frozenset(must), frozenset(maybe))
    if kind == "ok":
        arr = base.astype(cfg.dtype)
    elif kind in ("float64", "float32", "float16", "bool", "int8", "int32", "int64", "object"):
        arr = _cast(base, kind)
        if kind != cfg.dtype and not (kind == "float64" and cfg.dtype == "float32"):
            maybe.add(name)
    elif kind.startswith("complex"):
        arr = base.astype(kind)
        must.add(name)
    elif kind in ("nan", "inf", "-inf"):
        arr = base.astype(cfg.dtype)
        if n:
            arr[draw(st.integers(0, n - 1)), draw(st.integers(0, cfg.n_in - 1))] = float(kind)
            must.add(name)
    elif kind == "1d":
        arr = base.astype(cfg.dtype).ravel()
        must.add(name)
    elif kind == "3d":
        arr = base.astype(cfg.dtype).reshape(n, cfg.n_in, 1) if draw(st.booleans()) \
            else base.astype(cfg.dtype).reshape(1, n, cfg.n_in)
        must.add(name)
    elif kind == "features":
        k = draw(st.integers(0, cfg.n_in + 3).filter(lambda k: k != cfg.n_in))
        arr = (rng.standard_normal((n, k)) * scale).astype(cfg.dtype)
        must.add(name)
    elif kind == "0d":
        arr = np.array(base.ravel()[0] if base.size else 1.0, dtype=cfg.dtype)
        must.add(name)
    else:  # a Python scalar
        return Arg(1.5, "1.5", frozenset({name}))
    layout = draw(st.sampled_from(LAYOUTS))
    readonly = draw(st.booleans())
    value, ldesc = apply_layout(arr, layout, readonly)
    desc = f"{kind} {arr.dtype} {arr.shape} {ldesc}"
    return Arg(value, desc, frozenset(must), frozenset(maybe))


Y_KINDS_CE = ("ok",) * 6 + ("int8", "int32", "bool", "float_integral", "float_frac", "float16",
                            "object", "complex", "out_of_range", "negative", "nan", "0d", "2d",
                            "rows", "scalar")
Y_KINDS_TARGET = ("ok",) * 6 + ("float64", "float32", "float16", "int32", "int64", "bool", "object",
                                "complex", "nan", "inf", "1d", "cols", "3d", "0d", "rows")


@st.composite
def y_args(draw: Callable, cfg: ModelConfig, n: int, name: str = "y",
           kinds: Optional[Tuple[str, ...]] = None) -> Arg:
    """Targets for n rows of cfg's model (class labels for cross_entropy)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    must: set = set()
    maybe: set = set()
    D = cfg.n_out
    if cfg.loss == "cross_entropy":
        kind = draw(st.sampled_from(kinds or Y_KINDS_CE))
        lab = rng.integers(0, D, size=n)
        if kind == "ok":
            arr = lab.astype(np.int64)
        elif kind in ("int8", "int32"):
            arr = lab.astype(kind)
        elif kind == "bool":
            arr = lab.astype(bool)
            maybe.add(name)
        elif kind == "float_integral":
            arr = lab.astype(np.float64)
            maybe.add(name)
        elif kind == "float16":
            arr = lab.astype(np.float16)
            maybe.add(name)
        elif kind == "float_frac":
            arr = lab + 0.5
            must.add(name) if n else maybe.add(name)
        elif kind == "object":
            arr = lab.astype(object)
            maybe.add(name)
        elif kind == "complex":
            arr = lab.astype(np.complex128)
            must.add(name) if n else maybe.add(name)
        elif kind in ("out_of_range", "negative"):
            arr = lab.astype(np.int64)
            if n:
                bad = D + draw(st.sampled_from((0, 1, 100, 2**40))) if kind == "out_of_range" \
                    else -draw(st.sampled_from((1, 2, 2**40)))
                arr[draw(st.integers(0, n - 1))] = bad
                must.add(name)
        elif kind == "nan":
            arr = lab.astype(np.float64)
            if n:
                arr[draw(st.integers(0, n - 1))] = np.nan
            must.add(name) if n else maybe.add(name)
        elif kind == "0d":
            arr = np.array(int(lab[0]) if n else 1)
            must.add(name)
        elif kind == "2d":
            arr = lab.astype(np.int64).reshape(n, 1)
            must.add(name)
        elif kind == "rows":
            m = draw(st.integers(0, n + 3).filter(lambda m: m != n))
            arr = rng.integers(0, D, size=m).astype(draw(st.sampled_from(("int64", "int32"))))
            must.add(name)
        else:
            return Arg(1, "1", frozenset({name}))
    else:
        kind = draw(st.sampled_from(kinds or Y_KINDS_TARGET))
        if cfg.loss == "mse":
            base = rng.standard_normal((n, D))
        else:
            base = rng.uniform(0.0, 1.0, (n, D))
        if kind == "ok":
            arr = base.astype(cfg.dtype)
        elif kind in ("float64", "float32", "float16", "int32", "int64", "bool", "object"):
            arr = base.astype(kind) if kind not in ("bool",) else base > 0.5
            if kind != cfg.dtype and not (kind == "float64" and cfg.dtype == "float32"):
                maybe.add(name)
        elif kind == "complex":
            arr = base.astype(np.complex128)
            must.add(name) if n else maybe.add(name)
        elif kind in ("nan", "inf"):
            arr = base.astype(cfg.dtype)
            if n:
                arr[draw(st.integers(0, n - 1)), draw(st.integers(0, D - 1))] = float(kind)
                must.add(name)
        elif kind == "1d":
            arr = base.astype(cfg.dtype).ravel()
            if D != 1:
                must.add(name)
        elif kind == "cols":
            k = draw(st.integers(0, D + 2).filter(lambda k: k != D))
            arr = rng.standard_normal((n, k)).astype(cfg.dtype)
            must.add(name)
        elif kind == "3d":
            arr = base.astype(cfg.dtype).reshape(n, D, 1)
            must.add(name)
        elif kind == "0d":
            arr = np.array(0.5, dtype=cfg.dtype)
            must.add(name)
        else:  # rows
            m = draw(st.integers(0, n + 3).filter(lambda m: m != n))
            arr = rng.standard_normal((m, D)).astype(cfg.dtype)
            if D == 1 and draw(st.booleans()):
                arr = arr.ravel()
            must.add(name)
    layout = draw(st.sampled_from(LAYOUTS))
    readonly = draw(st.booleans())
    value, ldesc = apply_layout(arr, layout, readonly)
    return Arg(value, f"{kind} {arr.dtype} {arr.shape} {ldesc}", frozenset(must), frozenset(maybe))


@st.composite
def xy_cases(draw: Callable, cfg: ModelConfig, *, min_rows: int = 0, max_rows: int = 9,
             clean: bool = False) -> Case:
    """X and y for cfg's model; clean=True: only valid data (any layout)."""
    n = draw(st.integers(min_rows, max_rows)) if min_rows > 0 else \
        draw(st.one_of(st.just(0), st.integers(1, max_rows)))
    if clean:
        X = draw(x_args(cfg, n, kinds=("ok",)))
        y = draw(y_args(cfg, n, kinds=("ok",)))
    else:
        X = draw(x_args(cfg, n))
        y = draw(y_args(cfg, n))
    return Case(X, y, n)


# ------------------------------------------------------------------------------- other arguments
def int_arg(name: str, good: Tuple[Any, ...], bad: Tuple[Any, ...]) -> st.SearchStrategy:
    """An int-like argument: Arg with must={name} for the bad values."""
    return st.one_of(
        st.sampled_from(good).map(lambda v: Arg(v, f"{name}={v!r}")),
        st.sampled_from(bad).map(lambda v: Arg(v, f"{name}={v!r}", frozenset({name}))),
    )


BATCH_GOOD = (1, 2, 3, 4, 32, np.int64(2), np.int32(3))
BATCH_BAD = (0, -1, 2.0, 1.5, True, "2", float("nan"))
