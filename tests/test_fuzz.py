"""Property-based fuzzing of every public call that takes data.

Calls: model.train_step, compute_gradients (+ apply_gradients), loss_and_grads, predict(X,
batch_size), evaluate(X, y, batch_size), fit(X, y, epochs, batch_size, ...,
validation_data=...), lp.explain.gradcheck / taylor_check / moving_target / path_gradients,
and the fit/predict of lp.sklearn.MLPClassifier / MLPRegressor. The data come from
tests/fuzz_strategies.py: every dtype (bool, int8/32/64, float16/32/64, object, complex),
0 rows, 1-D, 3-D, wrong feature counts, NaN/Inf, Fortran order, strided and negative-stride
views, read-only arrays, Python lists, labels out of range / negative / float / 0-d, rows that
do not match, calls before compile and apply_gradients out of order, on float32 and float64
models with every loss, SGD/Adam, every schedule, with and without BatchNorm1d and Dropout.

The property of every call:

- it works: returns a finite result of the documented type and shape (and leaves the model
  alone where it is documented to: predict, evaluate, the lp.explain tools, loss_and_grads'
  parameters, buffers and optimizer state), or
- it raises TypeError, ValueError or RuntimeError whose message names the offending
  argument ("X", "y", "batch_size", "validation_data", ...; "compile" for a call before
  compile), and the model's state is bitwise unchanged: parameters, gradients, buffers, the
  whole of layerprop.io.model_to_state (optimizer slots and step counts, metadata), the
  dropout stream (model._core.rng_state()) and fit's shuffling generator.

A step refused because its loss or gradient is not finite (lp.NonFiniteError: valid but
badly scaled data can diverge) counts as a refusal of valid data that is allowed, with the
state still unchanged (lp.sklearn: scikit-learn's own "non-finite parameter weights" error,
after training up to that step, as scikit-learn's MLP does).

Data that are certainly invalid (NaN/Inf, wrong shapes, bad labels, ...) must be refused;
valid data in any layout must be accepted. Any other exception type, an unexpected warning,
or a crash of the interpreter is a failure.

Budget. By default each test runs a small, derandomized number of examples (CI: the whole
file in well under a minute on 2 cores). LAYERPROP_FUZZ_EXAMPLES=N runs N random examples per
test; the file has 13 hypothesis tests (and one plain test of the snapshot helper), so

    LAYERPROP_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz.py -q -p no:cacheprovider

runs 13 x 10,000 = 130,000 cases (about 25-40 ms each on this 2-core machine: split the tests
over two processes with -k, or lower N, to fit a time budget). A crash (segfault) kills the interpreter: run large
budgets in a subprocess; LAYERPROP_FUZZ_TRACE=path appends every case to `path` before it
runs, so the last line names the case that crashed. LAYERPROP_FUZZ_COLLECT=path records
every distinct violation (one JSON line per kind, with a count at exit) instead of stopping
at the first one, to survey everything that is wrong in one run.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import re
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerprop as lp
from layerprop.io import model_to_state

from fuzz_strategies import (BATCH_BAD, BATCH_GOOD, Arg, Case, ModelConfig, apply_layout, int_arg,
                             model_configs, x_args, xy_cases, y_args)

# When a test fails, hypothesis' pytest plugin imports hypothesis.extra._patching (libcst) to
# suggest a patch; that import gives a DeprecationWarning (mypy_extensions.TypedDict), which
# filterwarnings=error turns into an INTERNALERROR hiding the failure. Import it here, once,
# with that one warning ignored.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TypedDict")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

# ------------------------------------------------------------------------------- budget
_ENV_EXAMPLES = os.environ.get("LAYERPROP_FUZZ_EXAMPLES", "").strip()


def fuzz_settings(default: int) -> settings:
    """`default` derandomized examples (reproducible CI), or LAYERPROP_FUZZ_EXAMPLES random ones."""
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
    if _ENV_EXAMPLES:
        return settings(max_examples=int(_ENV_EXAMPLES), derandomize=False, **common)
    return settings(max_examples=default, derandomize=True, **common)


# ------------------------------------------------------------------------------- reporting
_COLLECT = os.environ.get("LAYERPROP_FUZZ_COLLECT")
_TRACE = os.environ.get("LAYERPROP_FUZZ_TRACE")
_seen: Dict[str, int] = {}
_trace_file = open(_TRACE, "a", buffering=1) if _TRACE else None


def _write_counts() -> None:
    if _trace_file is not None:
        _trace_file.close()
    if _COLLECT and _seen:
        with open(_COLLECT, "a") as f:
            f.write(json.dumps({"counts": _seen}) + "\n")


atexit.register(_write_counts)


def _signature(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else text
    text = re.sub(r"0x[0-9a-f]+", "0x..", text)
    text = re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
    return text[:120]


def violation(call: str, kind: str, detail: str, ctx: str) -> None:
    """A broken property: raise, or (LAYERPROP_FUZZ_COLLECT) record it once per signature."""
    if _COLLECT:
        sig = f"{call} | {kind} | {_signature(detail)}"
        if sig not in _seen:
            with open(_COLLECT, "a") as f:
                f.write(json.dumps({"sig": sig, "call": call, "kind": kind, "detail": detail[:2000],
                                    "case": ctx}) + "\n")
        _seen[sig] = _seen.get(sig, 0) + 1
        return
    raise AssertionError(f"{call}: {kind}: {detail}\n--- case ---\n{ctx}")


def trace(ctx: str) -> None:
    if _trace_file is not None:
        _trace_file.write(ctx.replace("\n", " | ") + "\n")


# ------------------------------------------------------------------------------- state
def _freeze(a: Any) -> Tuple[str, Tuple[int, ...], bytes]:
    a = np.asarray(a)
    return (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())


def snapshot(model: lp.Model) -> Dict[str, Any]:
    """Every piece of state a call could change, as bytes (NaN-safe, bitwise)."""
    tensors, meta = model_to_state(model, include_optimizer=True)
    return {
        "parameters": {n: _freeze(p) for n, p in model.parameters().items()},
        "gradients": {n: _freeze(g) for n, g in model.gradients().items()},
        "buffers": {n: _freeze(b) for n, b in model.buffers().items()},
        "optimizer_state": {n: _freeze(t) for n, t in tensors.items() if n.startswith("optimizer.")},
        "model_to_state": ({n: _freeze(t) for n, t in tensors.items()}, dict(meta)),
        "dropout_rng": tuple(int(v) for v in model._core.rng_state()),
        "fit_rng": json.dumps(model._fit_rng.bit_generator.state, sort_keys=True, default=str),
        "mode": (bool(model.training), bool(model._core.training)),
        "compiled": (model.loss, repr(model.optimizer), repr(model.schedule)),
    }


def diff_state(before: Dict[str, Any], after: Dict[str, Any], ignore: Iterable[str] = ()) -> List[str]:
    """Names of the parts that differ ("parameters[0.weight]", "dropout_rng", ...)."""
    out = []
    skip = set(ignore)
    for part, b in before.items():
        if part in skip:
            continue
        a = after[part]
        if isinstance(b, dict) and isinstance(a, dict) and part != "model_to_state":
            for n in sorted(set(a) | set(b)):
                if a.get(n) != b.get(n):
                    out.append(f"{part}[{n}]")
        elif a != b:
            out.append(part)
    return out


def assert_unchanged(before: Dict[str, Any], model: lp.Model, ignore: Iterable[str] = ()) -> None:
    diffs = diff_state(before, snapshot(model), ignore)
    assert not diffs, f"state changed: {diffs}"


def _names(msg: str, names: Iterable[str]) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names)


def _all_finite(x: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


# ------------------------------------------------------------------------------- the property
ALLOWED = (TypeError, ValueError, RuntimeError)
CALL_ORDER_NAMES = {"compile", "schedule", "compute_gradients"}


def check_call(call: str, fn: Callable[[], Any], *, args: Iterable[str], must: Iterable[str] = (),
               maybe: Iterable[str] = (), ctx: str, model: Optional[lp.Model] = None,
               state: Optional[Callable[[], Any]] = None, diff: Optional[Callable[[Any, Any], List[str]]] = None,
               check: Optional[Callable[[Any], List[str]]] = None,
               success_keeps: Optional[Iterable[str]] = None, must_type: Optional[type] = None,
               allowed_warnings: Callable[[warnings.WarningMessage], bool] = lambda w: False,
               divergence_keeps_state: bool = True) -> Tuple[bool, Any]:
    """Run fn() and judge it. `must`: argument names that are invalid (the call has to refuse,
    naming one of them); `maybe`: names it may refuse; neither: the call has to work. With
    `model`, a refusal must leave snapshot(model) bitwise unchanged, and a success the parts
    not in `success_keeps`' complement... (success_keeps=None: no check; else the snapshot
    parts listed must be unchanged). Returns (worked, result or exception)."""
    must, maybe, args = set(must), set(maybe), list(args)
    trace(f"{call}: {ctx}")
    if model is not None:
        state, diff = (lambda: snapshot(model)), diff_state
    before = state() if state is not None else None
    with warnings.catch_warnings(record=True) as caught:
        # Record instead of raising (pytest runs with filterwarnings=error): a warning is judged
        # below, against the narrow list of warnings the call may legitimately give.
        warnings.simplefilter("always")
        try:
            result = fn()
            exc: Optional[BaseException] = None
        except ALLOWED as e:
            exc = e
        except Exception as e:  # noqa: BLE001 -- any other type is the failure being looked for
            violation(call, f"raised {type(e).__name__}", f"{type(e).__name__}: {e}", ctx)
            return False, e
    for w in caught:
        if not allowed_warnings(w):
            violation(call, f"warning {w.category.__name__}", str(w.message), ctx)
    if exc is not None:
        msg = str(exc)
        allowed = must | maybe if (must or maybe) else set(args)
        # Divergence excuses a refusal only when nothing had to be refused up front.
        diverged = _diverged(exc) and not must
        if diverged and not divergence_keeps_state:
            return False, exc
        if not (must or maybe) and not diverged:
            violation(call, "refused valid input", f"{type(exc).__name__}: {msg}", ctx)
        elif not diverged and not _names(msg, allowed):
            violation(call, "message does not name the argument",
                      f"expected one of {sorted(allowed)} in {type(exc).__name__}: {msg}", ctx)
        # must_type: the type documented for a call-order refusal (RuntimeError), required
        # when that is the only thing wrong with the call.
        if (must_type is not None and not maybe and must <= CALL_ORDER_NAMES
                and not isinstance(exc, must_type)):
            violation(call, f"expected {must_type.__name__}", f"{type(exc).__name__}: {msg}", ctx)
        if state is not None:
            assert diff is not None
            changed = diff(before, state())
            if changed:
                violation(call, "refused call changed state",
                          f"{changed} after {type(exc).__name__}: {msg}", ctx)
        return False, exc
    if must:
        violation(call, "accepted invalid input", f"should refuse {sorted(must)}", ctx)
    if check is not None:
        for problem in check(result):
            violation(call, "bad result", problem, ctx)
    if success_keeps is not None and state is not None:
        assert diff is not None
        keep = set(success_keeps)
        changed = [d for d in diff(before, state()) if d.split("[")[0] in keep]
        if changed:
            violation(call, "state changed by a call documented not to change it", str(changed), ctx)
    return True, result


ALL_PARTS = ("parameters", "gradients", "buffers", "optimizer_state", "model_to_state", "dropout_rng",
             "fit_rng", "mode", "compiled")


def _diverged(exc: BaseException) -> bool:
    """The documented refusal of a step whose loss or gradient is not finite (valid but badly
    scaled data can diverge: int8 X reaches +-100): lp.NonFiniteError, which keeps the model's
    state, or, in lp.sklearn, scikit-learn's own "Solver produced non-finite parameter weights"."""
    nonfinite = getattr(lp, "NonFiniteError", None)
    return ((nonfinite is not None and isinstance(exc, nonfinite))
            or "non-finite parameter weights" in str(exc))


def _float_result(r: Any) -> List[str]:
    if not isinstance(r, float):
        return [f"expected a float, got {type(r).__name__}"]
    return [] if math.isfinite(r) else [f"non-finite loss {r}"]


def _params_finite(model: lp.Model) -> List[str]:
    return [f"parameter {n} not finite" for n, p in model.parameters().items() if not _all_finite(p)]


def _empty(n: int) -> set:
    """No samples: the refusal may name X or y (both are empty)."""
    return {"X", "y"} if n == 0 else set()


def _bn_single_row(cfg: ModelConfig, n: int) -> bool:
    return cfg.batchnorm and cfg.training and n == 1


def _ctx(cfg: ModelConfig, case: Optional[Case], *more: str) -> str:
    lines = [cfg.code()]
    if case is not None:
        lines.append(case.describe())
    lines.extend(more)
    return "\n".join(lines)


def _compile_flags(cfg: ModelConfig) -> Tuple[set, Optional[type]]:
    """A call that needs the loss, on a model never compiled: must refuse with RuntimeError."""
    return ({"compile"}, RuntimeError) if not cfg.compiled else (set(), None)


# ------------------------------------------------------------------------------- model calls
@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), data=st.data())
def test_train_step(cfg: ModelConfig, data: st.DataObject) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg))
    comp, must_type = _compile_flags(cfg)
    maybe = case.maybe | ({"X"} if _bn_single_row(cfg, case.n) else set())
    ok, _ = check_call("train_step", lambda: model.train_step(case.X.value, case.y.value),
                       args=("X", "y"), must=case.must | comp | _empty(case.n),
                       maybe=maybe, ctx=_ctx(cfg, case, "model.train_step(X, y)"), model=model,
                       check=_float_result, must_type=must_type)
    if ok:
        for p in _params_finite(model):
            violation("train_step", "bad result", p, _ctx(cfg, case))


@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), data=st.data())
def test_compute_then_apply_gradients(cfg: ModelConfig, data: st.DataObject) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg))
    comp, must_type = _compile_flags(cfg)
    maybe = case.maybe | ({"X"} if _bn_single_row(cfg, case.n) else set())
    ctx = _ctx(cfg, case, "model.compute_gradients(X, y); model.apply_gradients()")

    def grads_ok(r: Any) -> List[str]:
        out = _float_result(r)
        out += [f"gradient {n} not finite" for n, g in model.gradients().items() if not _all_finite(g)]
        return out

    ok, _ = check_call("compute_gradients", lambda: model.compute_gradients(case.X.value, case.y.value),
                       args=("X", "y"), must=case.must | comp | _empty(case.n),
                       maybe=maybe, ctx=ctx, model=model, check=grads_ok, must_type=must_type,
                       success_keeps=("parameters", "optimizer_state"))
    if not ok:
        return
    simultaneous = cfg.schedule == "simultaneous"
    ok, _ = check_call("apply_gradients", model.apply_gradients, args=(),
                       must=set() if simultaneous else {"schedule"}, ctx=ctx, model=model,
                       must_type=None if simultaneous else RuntimeError,
                       check=lambda r: _params_finite(model) + ([] if r is None else ["expected None"]))


@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), data=st.data())
def test_loss_and_grads(cfg: ModelConfig, data: st.DataObject) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg))
    comp, must_type = _compile_flags(cfg)
    maybe = case.maybe | ({"X"} if _bn_single_row(cfg, case.n) else set())

    def result_ok(r: Any) -> List[str]:
        if not (isinstance(r, tuple) and len(r) == 2):
            return [f"expected (loss, grads), got {type(r).__name__}"]
        loss, grads = r
        out = _float_result(loss)
        if list(grads) != list(model.parameters()):
            out.append(f"gradient names {list(grads)} != parameter names")
        for n, g in grads.items():
            p = model.parameters()[n]
            if not isinstance(g, np.ndarray) or g.shape != p.shape or g.dtype != p.dtype:
                out.append(f"gradient {n}: expected an array like the parameter")
            elif not _all_finite(g):
                out.append(f"gradient {n} not finite")
            elif np.shares_memory(g, model.gradients()[n]):
                out.append(f"gradient {n} is not a copy")
        return out

    check_call("loss_and_grads", lambda: model.loss_and_grads(case.X.value, case.y.value),
               args=("X", "y"), must=case.must | comp | _empty(case.n), maybe=maybe,
               ctx=_ctx(cfg, case, "model.loss_and_grads(X, y)"), model=model, check=result_ok,
               must_type=must_type, success_keeps=("parameters", "buffers", "optimizer_state", "fit_rng"))


@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), data=st.data(),
       bs=st.one_of(st.just(Arg(None, "batch_size=None")), int_arg("batch_size", BATCH_GOOD, BATCH_BAD)))
def test_predict(cfg: ModelConfig, data: st.DataObject, bs: Arg) -> None:
    model = cfg.build()
    n = data.draw(st.one_of(st.just(0), st.integers(1, 9)))
    X = data.draw(x_args(cfg, n))
    maybe = X.maybe | ({"X"} if n == 0 else set())

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, np.ndarray):
            return [f"expected an ndarray, got {type(r).__name__}"]
        out = []
        if r.shape != (n, cfg.n_out):
            out.append(f"shape {r.shape} != {(n, cfg.n_out)}")
        if r.dtype != np.dtype(cfg.dtype):
            out.append(f"dtype {r.dtype} != {cfg.dtype}")
        if not _all_finite(r):
            out.append("non-finite outputs")
        return out

    check_call("predict", lambda: model.predict(X.value, batch_size=bs.value), args=("X", "batch_size"),
               must=X.must | bs.must, maybe=maybe, ctx=_ctx(cfg, None, f"X={X.desc}; {bs.desc}",
                                                            "model.predict(X, batch_size=...)"),
               model=model, check=result_ok, success_keeps=ALL_PARTS)


@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), data=st.data(),
       bs=st.one_of(st.just(Arg(None, "batch_size=None")), int_arg("batch_size", BATCH_GOOD, BATCH_BAD)))
def test_evaluate(cfg: ModelConfig, data: st.DataObject, bs: Arg) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg))
    comp, must_type = _compile_flags(cfg)

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, dict):
            return [f"expected a dict, got {type(r).__name__}"]
        want = {"loss", "accuracy"} if cfg.loss == "cross_entropy" else {"loss"}
        out = [] if set(r) == want else [f"keys {sorted(r)} != {sorted(want)}"]
        if not (isinstance(r.get("loss"), float) and math.isfinite(r["loss"])):
            out.append(f"loss {r.get('loss')!r} not a finite float")
        if "accuracy" in want and not (isinstance(r.get("accuracy"), float) and 0.0 <= r["accuracy"] <= 1.0):
            out.append(f"accuracy {r.get('accuracy')!r} not in [0, 1]")
        return out

    check_call("evaluate", lambda: model.evaluate(case.X.value, case.y.value, batch_size=bs.value),
               args=("X", "y", "batch_size"),
               must=case.must | bs.must | comp | _empty(case.n), maybe=case.maybe,
               ctx=_ctx(cfg, case, bs.desc, "model.evaluate(X, y, batch_size=...)"), model=model,
               check=result_ok, must_type=must_type, success_keeps=ALL_PARTS)


@st.composite
def validation_args(draw: Callable, cfg: ModelConfig) -> Arg:
    """validation_data: None, a good pair, a pair with bad X_val / y_val, or a wrong structure."""
    kind = draw(st.sampled_from(("none", "none", "pair", "pair", "list", "bad_pair", "bad_pair",
                                 "one", "three", "array", "dict")))
    if kind == "none":
        return Arg(None, "validation_data=None")
    m = draw(st.one_of(st.just(0), st.integers(1, 6)))
    name = "validation_data"
    if kind == "bad_pair":
        Xv, yv = draw(x_args(cfg, m, name=name)), draw(y_args(cfg, m, name=name))
    else:
        Xv, yv = draw(x_args(cfg, m, name=name, kinds=("ok",))), draw(y_args(cfg, m, name=name, kinds=("ok",)))
    must = set(Xv.must | yv.must) | ({name} if m == 0 else set())
    maybe = set(Xv.maybe | yv.maybe)
    desc = f"validation_data: X_val={Xv.desc}, y_val={yv.desc}"
    if kind in ("pair", "bad_pair"):
        return Arg((Xv.value, yv.value), f"{desc} (tuple)", frozenset(must), frozenset(maybe))
    if kind == "list":
        return Arg([Xv.value, yv.value], f"{desc} (list)", frozenset(must), frozenset(maybe))
    bad = {"one": (Xv.value,), "three": (Xv.value, yv.value, yv.value), "array": Xv.value,
           "dict": {"X": Xv.value, "y": yv.value}}[kind]
    return Arg(bad, f"validation_data={kind}: {desc}", frozenset({name}))


@fuzz_settings(50)
@given(cfg=model_configs(compiled=None), data=st.data(),
       epochs=int_arg("epochs", (0, 1, 2, np.int64(1)), (-1, 1.5, True, "1")),
       initial_epoch=int_arg("initial_epoch", (0, 0, 0, 1, 3), (-1, 0.5)),
       bs=int_arg("batch_size", BATCH_GOOD, BATCH_BAD + (None,)),
       shuffle=st.booleans())
def test_fit(cfg: ModelConfig, data: st.DataObject, epochs: Arg, initial_epoch: Arg, bs: Arg,
             shuffle: bool) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg))
    val = data.draw(validation_args(cfg))
    comp, must_type = _compile_flags(cfg)
    maybe = set(case.maybe | val.maybe)
    b = bs.value
    if (cfg.batchnorm and cfg.training and case.n and not bs.must and int(b) >= 1
            and (int(b) == 1 or case.n % int(b) == 1)):
        maybe |= {"batch_size", "X"}  # a batch of one row: BatchNorm1d cannot normalize it
    must = case.must | epochs.must | initial_epoch.must | bs.must | val.must | comp
    must |= _empty(case.n)

    def result_ok(h: Any) -> List[str]:
        if not isinstance(h, lp.History):
            return [f"expected a History, got {type(h).__name__}"]
        ran = list(range(int(initial_epoch.value), int(epochs.value)))
        out = [] if h.epoch == ran else [f"epochs run {h.epoch} != {ran}"]
        want = {"loss"} if ran else set()
        if ran and val.value is not None:
            want |= {"val_loss", "val_accuracy"} if cfg.loss == "cross_entropy" else {"val_loss"}
        if set(h.history) != want:
            out.append(f"history keys {sorted(h.history)} != {sorted(want)}")
        for k, v in h.history.items():
            if len(v) != len(ran) or not _all_finite(v):
                out.append(f"history[{k!r}] = {v}")
        return out + _params_finite(model)

    check_call("fit", lambda: model.fit(case.X.value, case.y.value, epochs=epochs.value, batch_size=b,
                                        shuffle=shuffle, validation_data=val.value, progress=False,
                                        initial_epoch=initial_epoch.value),
               args=("X", "y", "epochs", "batch_size", "validation_data", "initial_epoch"),
               must=must, maybe=maybe,
               ctx=_ctx(cfg, case, val.desc, epochs.desc, initial_epoch.desc, bs.desc, f"shuffle={shuffle}",
                        "model.fit(X, y, epochs=..., batch_size=..., shuffle=..., validation_data=..., "
                        "progress=False, initial_epoch=...)"),
               model=model, check=result_ok, must_type=must_type)


OPS = ("train_step", "compute_gradients", "apply_gradients", "loss_and_grads", "predict", "evaluate",
       "fit", "compile", "eval", "train")


@fuzz_settings(60)
@given(cfg=model_configs(compiled=None), ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=5),
       seed=st.integers(0, 2**16))
def test_call_order(cfg: ModelConfig, ops: List[str], seed: int) -> None:
    """Valid data, calls in any order: a call before compile, apply_gradients before
    compute_gradients (or after train_step, twice, ...), compile again in between."""
    from fuzz_strategies import good_batch, make_optimizer, make_schedule
    cfg.warmup = 0
    model = cfg.build()
    rng = np.random.default_rng(seed)
    X, y = good_batch(rng, cfg, 4)
    compiled = cfg.compiled
    touched = False  # any call that may have filled the gradients
    done: List[str] = []
    for op in ops:
        ctx = _ctx(cfg, None, "valid X, y of 4 rows; calls: " + ", ".join(done + [op]))
        comp = set() if compiled else {"compile"}
        ctype = None if compiled else RuntimeError
        if op == "compile":
            with warnings.catch_warnings():  # LocoProp M before a norm layer or Dropout: documented
                warnings.filterwarnings("ignore", message=r"LocoProp\('M'\)")
                model.compile(loss=cfg.loss, optimizer=make_optimizer(cfg.optimizer),
                              schedule=make_schedule(cfg.schedule))
            compiled = True
        elif op == "eval":
            model.eval()
        elif op == "train":
            model.train()
        elif op == "apply_gradients":
            must = set(comp)
            maybe = set()
            if compiled and cfg.schedule != "simultaneous":
                must |= {"schedule"}
            elif compiled and not touched:
                must |= {"compute_gradients"}
            elif compiled:
                maybe |= {"compute_gradients"}
            ok, _ = check_call("apply_gradients", model.apply_gradients, args=(), must=must, maybe=maybe,
                               ctx=ctx, model=model, must_type=RuntimeError if must else None,
                               check=lambda r: _params_finite(model))
        elif op == "predict":
            check_call("predict", lambda: model.predict(X), args=("X",), ctx=ctx, model=model,
                       check=lambda r: [] if _all_finite(r) else ["non-finite outputs"], success_keeps=ALL_PARTS)
        else:
            fns = {"train_step": lambda: model.train_step(X, y),
                   "compute_gradients": lambda: model.compute_gradients(X, y),
                   "loss_and_grads": lambda: model.loss_and_grads(X, y),
                   "evaluate": lambda: model.evaluate(X, y),
                   "fit": lambda: model.fit(X, y, epochs=1, batch_size=2, progress=False)}
            ok, _ = check_call(op, fns[op], args=("X", "y"), must=comp, ctx=ctx, model=model, must_type=ctype)
            touched |= ok and op in ("train_step", "compute_gradients", "loss_and_grads", "fit")
        done.append(op)


# ------------------------------------------------------------------------------- lp.explain
def _explain_flags(cfg: ModelConfig, case: Case) -> Tuple[set, set, Optional[type]]:
    comp, must_type = _compile_flags(cfg)
    must = case.must | comp | _empty(case.n)
    maybe = case.maybe | ({"X"} if _bn_single_row(cfg, case.n) else set())
    return must, maybe, must_type


@fuzz_settings(40)
@given(cfg=model_configs(small=True, compiled=None), data=st.data(),
       eps=st.one_of(st.sampled_from((1e-6, 1e-5)).map(lambda v: Arg(v, f"eps={v}")),
                     st.sampled_from((0.0, -1e-6, float("nan"), float("inf"), "a")).map(
                         lambda v: Arg(v, f"eps={v!r}", frozenset({"eps"})))))
def test_explain_gradcheck(cfg: ModelConfig, data: st.DataObject, eps: Arg) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg, max_rows=5))
    must, maybe, must_type = _explain_flags(cfg, case)

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, lp.explain.GradcheckReport):
            return [f"expected a GradcheckReport, got {type(r).__name__}"]
        out = [] if isinstance(r.passed, bool) else ["passed is not a bool"]
        if math.isnan(r.max_rel_error):
            out.append("max_rel_error is NaN")
        if not math.isfinite(r.loss):
            out.append(f"non-finite loss {r.loss}")
        str(r)
        return out

    check_call("explain.gradcheck", lambda: lp.explain.gradcheck(model, case.X.value, case.y.value, eps=eps.value),
               args=("model", "X", "y", "eps"), must=must | eps.must, maybe=maybe,
               ctx=_ctx(cfg, case, eps.desc, "lp.explain.gradcheck(model, X, y, eps=...)"), model=model,
               check=result_ok, must_type=must_type, success_keeps=ALL_PARTS)


@fuzz_settings(40)
@given(cfg=model_configs(small=True, compiled=None), data=st.data(),
       steps=st.one_of(st.sampled_from(((1e-1, 1e-2, 1e-3), (1e-2,), [1e-3, 1e-4])).map(
           lambda v: Arg(v, f"steps={v}")),
           st.sampled_from(((), (0.0,), (-1e-2,), ("a",), 5, (float("nan"),), None)).map(
               lambda v: Arg(v, f"steps={v!r}", frozenset({"steps"})))))
def test_explain_taylor_check(cfg: ModelConfig, data: st.DataObject, steps: Arg) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg, max_rows=5))
    must, maybe, must_type = _explain_flags(cfg, case)

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, lp.explain.TaylorReport):
            return [f"expected a TaylorReport, got {type(r).__name__}"]
        out = [] if len(r.rows) == len(steps.value) else [f"{len(r.rows)} rows for {len(steps.value)} steps"]
        if not math.isfinite(r.loss):
            out.append(f"non-finite loss {r.loss}")
        str(r)
        return out

    check_call("explain.taylor_check",
               lambda: lp.explain.taylor_check(model, case.X.value, case.y.value, steps=steps.value),
               args=("model", "X", "y", "steps"), must=must | steps.must, maybe=maybe,
               ctx=_ctx(cfg, case, steps.desc, "lp.explain.taylor_check(model, X, y, steps=...)"), model=model,
               check=result_ok, must_type=must_type, success_keeps=ALL_PARTS)


@fuzz_settings(40)
@given(cfg=model_configs(small=True, compiled=None), data=st.data(),
       lr=st.one_of(st.sampled_from((None, 0.1, 1e-3)).map(lambda v: Arg(v, f"lr={v}")),
                    st.sampled_from((0.0, -0.1, float("nan"), float("inf"), "x")).map(
                        lambda v: Arg(v, f"lr={v!r}", frozenset({"lr"})))))
def test_explain_moving_target(cfg: ModelConfig, data: st.DataObject, lr: Arg) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg, max_rows=5))
    must, maybe, must_type = _explain_flags(cfg, case)
    n_layers = 2 + int(cfg.batchnorm)

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, lp.explain.MovingTargetReport):
            return [f"expected a MovingTargetReport, got {type(r).__name__}"]
        out = [] if len(r.rows) == n_layers else [f"{len(r.rows)} rows for {n_layers} layers"]
        if not math.isfinite(r.loss):
            out.append(f"non-finite loss {r.loss}")
        str(r)
        return out

    check_call("explain.moving_target", lambda: lp.explain.moving_target(model, case.X.value, case.y.value, lr=lr.value),
               args=("model", "X", "y", "lr"), must=must | lr.must, maybe=maybe,
               ctx=_ctx(cfg, case, lr.desc, "lp.explain.moving_target(model, X, y, lr=...)"), model=model,
               check=result_ok, must_type=must_type, success_keeps=ALL_PARTS)


@fuzz_settings(40)
@given(cfg=model_configs(small=True, compiled=None), data=st.data())
def test_explain_path_gradients(cfg: ModelConfig, data: st.DataObject) -> None:
    model = cfg.build()
    case = data.draw(xy_cases(cfg, max_rows=5))
    must, maybe, must_type = _explain_flags(cfg, case)
    if cfg.batchnorm:
        must = must | {"model"}  # documented: path_gradients refuses normalization layers
        must_type = None
    params = model.parameters()
    kind = data.draw(st.sampled_from(("ok", "ok", "ok", "name", "range", "arity", "negative", "bool")))
    name = data.draw(st.sampled_from(list(params)))
    shape = params[name].shape
    index: Any = tuple(data.draw(st.integers(0, s - 1)) for s in shape)
    if kind == "name":
        name = data.draw(st.sampled_from(("nope", "0.weights", "")))
        must = must | {"param"}
    elif kind == "range":
        index = tuple(s + data.draw(st.integers(0, 2)) for s in shape)
        must = must | {"index"}
    elif kind == "arity":
        index = index + (0,) if data.draw(st.booleans()) else index[:-1]
        must = must | {"index"}
    elif kind == "negative":
        index = tuple(-1 for _ in shape)
        maybe = maybe | {"index"}
    elif kind == "bool":
        index = tuple(True for _ in shape)
        maybe = maybe | {"index"}
    if len(index) == 1 and data.draw(st.booleans()):
        index = index[0]

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, lp.explain.PathReport):
            return [f"expected a PathReport, got {type(r).__name__}"]
        out = []
        if not (math.isfinite(r.path_sum) and math.isfinite(r.backprop)):
            out.append(f"path_sum {r.path_sum}, backprop {r.backprop}")
        elif abs(r.path_sum - r.backprop) > 1e-8 * max(1.0, abs(r.backprop)):
            out.append(f"path_sum {r.path_sum!r} != backprop {r.backprop!r}")
        if abs(sum(p.value for p in r.paths) - r.path_sum) > 1e-9 * max(1.0, abs(r.path_sum)):
            out.append("path_sum is not the sum of the paths")
        str(r)
        return out

    check_call("explain.path_gradients",
               lambda: lp.explain.path_gradients(model, case.X.value, case.y.value, name, index),
               args=("model", "X", "y", "param", "index"), must=must, maybe=maybe,
               ctx=_ctx(cfg, case, f"param={name!r}, index={index!r}",
                        "lp.explain.path_gradients(model, X, y, param, index)"), model=model,
               check=result_ok, must_type=must_type, success_keeps=ALL_PARTS)


# ------------------------------------------------------------------------------- lp.sklearn
def _freeze_obj(obj: Any, depth: int = 0) -> Any:
    """A comparable, bitwise picture of an estimator's attributes (the model by snapshot)."""
    if isinstance(obj, lp.Model):
        return ("model", snapshot(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return ("objarray", obj.shape, repr(obj.tolist()))
        return _freeze(obj)
    if isinstance(obj, np.random.RandomState):
        st_ = obj.get_state()
        return ("rs", st_[0], st_[1].tobytes(), st_[2:])
    if isinstance(obj, dict):
        return tuple((k, _freeze_obj(v, depth + 1)) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__,) + tuple(_freeze_obj(v, depth + 1) for v in obj)
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    if hasattr(obj, "__dict__") and depth < 3 and not isinstance(obj, type):
        return (type(obj).__name__, _freeze_obj(vars(obj), depth + 1))
    return repr(obj)


def _estimator_state(est: Any) -> Any:
    return {k: _freeze_obj(v) for k, v in vars(est).items()}


def _estimator_diff(a: Any, b: Any) -> List[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _sklearn_warning_ok(w: warnings.WarningMessage) -> bool:
    """The warnings scikit-learn's own MLP gives in these settings (max_iter is tiny on purpose)."""
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
    if issubclass(w.category, ConvergenceWarning):
        return True
    if issubclass(w.category, DataConversionWarning) and "column-vector y" in str(w.message):
        return True
    return issubclass(w.category, UserWarning) and "batch_size" in str(w.message)


SK_X_FIT = ("ok",) * 6 + ("float32", "bool", "int8", "int32", "int64", "float16", "object",
                          "complex128", "nan", "inf", "1d", "3d", "0d", "scalar")


@st.composite
def sklearn_x(draw: Callable, n: int, features: int, kinds: Tuple[str, ...]) -> Arg:
    cfg = ModelConfig(dtype="float64", n_in=features)
    a = draw(x_args(cfg, n, kinds=kinds))
    # scikit-learn converts bool/int/float16/object numbers to floats: any real dtype is valid.
    return Arg(a.value, a.desc, a.must, frozenset())


@st.composite
def sklearn_y(draw: Callable, n: int, classifier: bool) -> Arg:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    must: set = set()
    maybe: set = set()
    if classifier:
        kind = draw(st.sampled_from(("ok",) * 5 + ("negative_labels", "strings", "float_integral", "bool",
                                                   "float_frac", "nan", "complex", "0d", "2d", "rows")))
        k = draw(st.integers(2, 4))
        lab = rng.integers(0, k, size=n)
        if kind == "ok":
            arr: Any = lab.astype(np.int64)
        elif kind == "negative_labels":
            arr = lab.astype(np.int64) * 7 - 10
        elif kind == "strings":
            arr = np.array(["cat", "dog", "emu", "gnu"])[lab]
        elif kind == "float_integral":
            arr = lab.astype(np.float64)
        elif kind == "bool":
            arr = lab.astype(bool)
        elif kind == "float_frac":
            arr = lab + 0.5
            if len(set(arr.tolist())) > 1:
                must.add("y")
        elif kind == "nan":
            arr = lab.astype(np.float64)
            arr[draw(st.integers(0, n - 1))] = np.nan
            must.add("y")
        elif kind == "complex":
            arr = lab.astype(np.complex128)
            must.add("y")
        elif kind == "0d":
            arr = np.array(1)
            must.add("y")
        elif kind == "2d":
            arr = lab.reshape(n, 1)
        else:
            arr = rng.integers(0, k, size=draw(st.integers(0, n + 3).filter(lambda m: m != n)))
            must.add("y")
        if not must and kind != "0d" and len(set(np.asarray(arr).ravel().tolist())) < 2:
            maybe.add("y")  # one class: nothing to classify
    else:
        kind = draw(st.sampled_from(("ok",) * 5 + ("multi", "float32", "int64", "bool", "object", "nan",
                                                   "inf", "complex", "0d", "3d", "rows", "zero_cols")))
        base = rng.standard_normal(n)
        if kind == "ok":
            arr = base
        elif kind == "multi":
            arr = rng.standard_normal((n, draw(st.integers(1, 3))))
        elif kind in ("float32", "int64", "object"):
            arr = (base * 3).astype(kind)
        elif kind == "bool":
            arr = base > 0
        elif kind in ("nan", "inf"):
            arr = base.copy()
            arr[draw(st.integers(0, n - 1))] = float(kind)
            must.add("y")
        elif kind == "complex":
            arr = base.astype(np.complex128)
            must.add("y")
        elif kind == "0d":
            arr = np.array(1.0)
            must.add("y")
        elif kind == "3d":
            arr = base.reshape(n, 1, 1)
            must.add("y")
        elif kind == "zero_cols":
            arr = np.zeros((n, 0))
            must.add("y")
        else:
            arr = rng.standard_normal(draw(st.integers(0, n + 3).filter(lambda m: m != n)))
            must.add("y")
    layout = draw(st.sampled_from(("C", "C", "F", "strided_rows", "negative_stride", "list")))
    value, ldesc = apply_layout(np.asarray(arr), layout, draw(st.booleans()))
    return Arg(value, f"{kind} {np.asarray(arr).dtype} {np.asarray(arr).shape} {ldesc}",
               frozenset(must), frozenset(maybe))


@st.composite
def sklearn_estimators(draw: Callable, classifier: bool) -> Tuple[Any, str]:
    from layerprop.sklearn import MLPClassifier, MLPRegressor
    cls = MLPClassifier if classifier else MLPRegressor
    hidden = draw(st.sampled_from(((3,), (2, 2))))
    solver = draw(st.sampled_from(("adam", "sgd")))
    batch = draw(st.sampled_from(("auto", 1, 3, 50)))
    max_iter = draw(st.integers(1, 3))
    sched = draw(st.sampled_from((None, "lp.Layerwise()", "lp.LocoProp(inner_steps=2)")))
    schedule = None if sched is None else (lp.Layerwise() if sched.startswith("lp.Layerwise") else lp.LocoProp(inner_steps=2))
    kw = dict(hidden_layer_sizes=hidden, solver=solver, batch_size=batch, max_iter=max_iter,
              random_state=0, learning_rate_init=0.01, schedule=schedule)
    code = (f"est = lp.sklearn.{cls.__name__}(hidden_layer_sizes={hidden}, solver={solver!r}, "
            f"batch_size={batch!r}, max_iter={max_iter}, random_state=0, learning_rate_init=0.01, "
            f"schedule={sched})")
    return cls(**kw), code


def _sklearn_test(classifier: bool, data: st.DataObject) -> None:
    est, code = data.draw(sklearn_estimators(classifier))
    name = type(est).__name__
    features = data.draw(st.integers(1, 4))
    if data.draw(st.booleans()):  # refit of an already fitted estimator: a refusal keeps it as it was
        rng = np.random.default_rng(0)
        y0 = rng.integers(0, 3, size=12) if classifier else rng.standard_normal(12)
        y0[:3] = [0, 1, 2] if classifier else y0[:3]
        with warnings.catch_warnings():
            # tiny max_iter on purpose: the fit stops before converging
            from sklearn.exceptions import ConvergenceWarning
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            warnings.filterwarnings("ignore", message="Got `batch_size`", category=UserWarning)
            try:
                est.fit(rng.standard_normal((12, features)), y0)
                code += f"\nest.fit(<12 x {features} float64>, <12 valid targets>)"
            except ValueError as e:  # LocoProp with SGD may diverge (documented): start unfitted
                if not _diverged(e):
                    raise
                from sklearn.base import clone
                est = clone(est)
    n = data.draw(st.one_of(st.just(0), st.integers(1, 12)))
    X = data.draw(sklearn_x(n, features, SK_X_FIT))
    y = data.draw(sklearn_y(n, classifier)) if n else Arg(np.zeros(0, np.int64), "empty")
    must = set(X.must | y.must) | _empty(n)
    ctx = "\n".join([code, f"X={X.desc}; y={y.desc}", "est.fit(X, y)"])
    ok, _ = check_call(f"{name}.fit", lambda: est.fit(X.value, y.value), args=("X", "y"), must=must,
                       maybe=X.maybe | y.maybe, ctx=ctx, state=lambda: _estimator_state(est),
                       diff=_estimator_diff, allowed_warnings=_sklearn_warning_ok,
                       divergence_keeps_state=False)  # like scikit-learn's MLP: it trained until then
    if not ok:
        return
    m = data.draw(st.integers(1, 6))
    X2 = data.draw(sklearn_x(m, features, SK_X_FIT[:-4] + ("features", "0d")))

    def result_ok(r: Any) -> List[str]:
        if not isinstance(r, np.ndarray) or r.shape[:1] != (m,):
            return [f"expected an array of {m} rows, got {getattr(r, 'shape', type(r).__name__)}"]
        if classifier:
            classes = set(np.asarray(est.classes_).tolist())
            if r.ndim == 1 and not set(r.tolist()) <= classes:
                return [f"predicted labels {set(r.tolist())} not in classes_ {classes}"]
            return []
        return [] if _all_finite(r) else ["non-finite predictions"]

    check_call(f"{name}.predict", lambda: est.predict(X2.value), args=("X",), must=X2.must,
               maybe=X2.maybe, ctx=ctx + f"\nX2={X2.desc}\nest.predict(X2)",
               state=lambda: _estimator_state(est), diff=_estimator_diff, check=result_ok,
               success_keeps=("model_",), allowed_warnings=_sklearn_warning_ok)


@fuzz_settings(30)
@given(data=st.data())
def test_sklearn_classifier(data: st.DataObject) -> None:
    pytest.importorskip("sklearn")
    _sklearn_test(True, data)


@fuzz_settings(30)
@given(data=st.data())
def test_sklearn_regressor(data: st.DataObject) -> None:
    pytest.importorskip("sklearn")
    _sklearn_test(False, data)


# ------------------------------------------------------------------------------- the helpers
def test_snapshot_sees_every_part() -> None:
    """snapshot/assert_unchanged notice a change in each part they watch."""
    cfg = ModelConfig(batchnorm=True, dropout=True, optimizer="adam", warmup=1)
    model = cfg.build()
    before = snapshot(model)
    assert_unchanged(before, model)
    model.parameters()["0.weight"][0, 0] += 1
    model.gradients()["0.bias"][0] += 1
    model.buffers()["1.running_mean"][0] += 1
    model._core.state_view(0)[0] += 1
    model._core.set_rng_state(*[int(v) + 1 for v in model._core.rng_state()])
    model._fit_rng.random()
    changed = {d.split("[")[0] for d in diff_state(before, snapshot(model))}
    assert {"parameters", "gradients", "buffers", "optimizer_state", "dropout_rng", "fit_rng"} <= changed
