"""Coverage-guided fuzzing (atheris) of what layerprop reads from files it did not write.

Two targets:

- ``load`` (default): ``lp.load`` on mutated saved models. The seeds are small models saved
  in memory (a Sequential, a graph with add/concat and a shared layer, BatchNorm1d/LayerNorm/
  Dropout, float32 and float64, with and without compile settings and optimizer state).
  Mutations are libFuzzer's byte-level ones plus, half the time, structure-aware ones on the
  JSON inside the file (architecture metadata and safetensors tensor entries). Only ValueError
  may escape ``layerprop.io._load_bytes``; a model that loads must also predict.
- ``cli``: the data-file readers of ``layerprop train`` (CSV and .npz, then the target
  encoding), on mutated small data files. Only ``CliError`` or OSError may escape (what
  ``layerprop train`` reports as a one-line error).

Run (``pip install atheris``)::

    python tests/fuzz/fuzz_load.py -atheris_runs=100000               # lp.load
    python tests/fuzz/fuzz_load.py --target=cli -atheris_runs=100000  # layerprop train's readers

Any other libFuzzer flag works too (e.g. ``-max_total_time=300``). Without a corpus folder on
the command line the seeds go to a fresh temporary folder. A finding stops the run and
writes ``crash-<hash>``; replay it with ``python tests/fuzz/fuzz_load.py crash-<hash>``.

tests/test_io_hostile.py runs ``load_one_input`` / ``cli_one_input`` over the seeds and a few
hundred random mutations (``mutate``) without atheris, so CI checks the harness.
"""
from __future__ import annotations

import io as _pyio
import json
import math
import os
import random
import sys
import tempfile
from typing import Any, Callable, List, Optional

import numpy as np

_INTERESTING = [0, 1, -1, 2, 3, 7, 64, 255, 4096, 4097, 65536, 2 ** 26, 2 ** 31, 2 ** 32, 2 ** 40,
                2 ** 40 + 1, 2 ** 63, 2 ** 64, 10 ** 18, -2 ** 63, 10 ** 30]


# ----------------------------------------------------------------------------- seeds
def load_seeds() -> List[bytes]:
    """Small saved models, as file bytes."""
    import layerprop as lp
    from layerprop import io as lpio
    from safetensors.numpy import save

    rng = np.random.default_rng(0)

    def data(n_in: int, n_out: int, dtype: str = "float32") -> Any:
        return rng.standard_normal((16, n_in)).astype(dtype), rng.integers(0, n_out, 16)

    def as_bytes(model: Any, include_optimizer: bool = True) -> bytes:
        tensors, meta = lpio.model_to_state(model, include_optimizer=include_optimizer)
        return save(dict(tensors), metadata=meta)

    out = []
    seq = lp.Sequential(lp.Linear(3, 4), lp.ReLU(), lp.Linear(4, 2), seed=0)
    out.append(as_bytes(seq))
    seq2 = lp.Sequential(lp.Linear(3, 4, name="a"), lp.LeakyReLU(0.1), lp.Linear(4, 2, bias=False), seed=1)
    seq2.compile(optimizer=lp.SGD(lr=0.1, momentum=0.9))
    seq2.train_step(*data(3, 2))
    out.append(as_bytes(seq2))

    x = lp.Input(3)
    h = lp.ReLU()(lp.Linear(3, 4, name="enc")(x))
    s = lp.add(h, lp.Linear(3, 4)(x))
    shared = lp.Linear(4, 4)
    y = shared(lp.Tanh()(shared(s)))
    g = lp.Model(x, lp.Linear(8, 2)(lp.concat([y, s])), seed=2)
    g.compile(optimizer=lp.Adam(lr=0.01))
    g.train_step(*data(3, 2))
    out.append(as_bytes(g))
    out.append(as_bytes(g, include_optimizer=False))

    norm = lp.Sequential(lp.Linear(3, 4), lp.BatchNorm1d(4), lp.GELU(), lp.Dropout(0.2), lp.LayerNorm(4),
                         lp.Linear(4, 2), dtype="float64", seed=3)
    norm.compile(optimizer=lp.AdamW(lr=0.01),
                 schedule=lp.LocoProp(variant="S", inner_steps=2, inner_lr=0.05, target_lr=2.0))
    norm.train_step(*data(3, 2, "float64"))
    out.append(as_bytes(norm))

    x = lp.Input(2)
    bn = lp.BatchNorm1d(2, affine=False, name="bn")(x)
    g2 = lp.Model(x, lp.Sigmoid()(lp.Linear(4, 1, name="head")(lp.concat([bn, x]))), dtype="float64", seed=4)
    g2.compile(loss="mse", optimizer=lp.SGD(lr=0.1), schedule=lp.Layerwise(order="bottom_up"))
    out.append(as_bytes(g2))
    return out


def cli_seeds() -> List[bytes]:
    """Small data files for `layerprop train`: CSV (header or not, text or numeric labels,
    regression) and .npz."""
    out = [b"a,b,label\n1,2,cat\n3,4,dog\n5,6,cat\n7,8,dog\n",
           b"1,2,0\n3,4,1\n5,6,0\n7,8.5,1\n",
           b"x1,x2,y\n0.5,1e3,2.25\n-1,2,3.5\n4,-0.25,-1\n",
           b"f,t\n1,1\n2,2.0\n3, 1\n4,2\n"]
    for X, y in ((np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1])),
                 (np.arange(6, dtype=np.float32).reshape(3, 2), np.array([[0.5], [1.5], [2.5]]))):
        buf = _pyio.BytesIO()
        np.savez(buf, X=X, y=y)
        out.append(buf.getvalue())
    return out


# ----------------------------------------------------------------------------- one input
def load_one_input(data: bytes) -> None:
    """lp.load's contract on arbitrary bytes: a model or ValueError; a model predicts."""
    from layerprop import io as lpio
    try:
        model = lpio._load_bytes(data, "<fuzz>")
    except ValueError:
        return
    if sum(t.width for t in model._order) <= 4096:
        out = model.predict(np.zeros((2, model.in_features), model.dtype))
        assert out.shape == (2, model.out_features), out.shape


def cli_one_input(data: bytes) -> None:
    """`layerprop train`'s reading of a data file: arrays, or CliError / OSError."""
    import argparse
    from layerprop import cli_train
    suffix = ".npz" if data[:2] == b"PK" else ".csv"
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="lp-fuzz-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        args = argparse.Namespace(data=path, target=None, x_key="X", y_key="y", task="auto")
        try:
            X, y = cli_train._load(args)
            if len(X) < 2 or not np.all(np.isfinite(X)):
                return
            classify = cli_train._is_classification(y, args.task)
            cli_train._targets(y, classify)
        except (cli_train.CliError, OSError):
            return
    finally:
        os.unlink(path)


# ----------------------------------------------------------------------------- mutations
def _split(data: bytes) -> Optional[tuple]:
    """(safetensors header object, data bytes) of a well-formed file, else None."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def _random_value(rnd: random.Random, old: Any) -> Any:
    r = rnd.random()
    if r < 0.35:
        return rnd.choice(_INTERESTING) if rnd.random() < 0.7 else (old if isinstance(old, int) else 0) + rnd.randint(-3, 3)
    if r < 0.45:
        return rnd.choice([0.0, -1.0, 1e308, float("nan"), float("inf"), 0.5, 2.0])
    if r < 0.6:
        return rnd.choice(["", "x", "Linear", "ReLU", "concat", "add", "layer", "input", "F32", "F64",
                           "I64", "U8", "BOOL", "Model", "Sequential", "float64", "LocoProp", "Adam",
                           "a.b", "optimizer.steps", "0.weight", "1.running_var"])
    if r < 0.7:
        return rnd.choice([None, True, False])
    if r < 0.8:
        return [] if rnd.random() < 0.5 else [old, old]
    if r < 0.9:
        return {}
    return old


def _mutate_json(obj: Any, rnd: random.Random, depth: int = 0) -> Any:
    """One random edit somewhere inside a JSON value."""
    if isinstance(obj, dict) and obj and depth < 12 and rnd.random() < 0.85:
        k = rnd.choice(list(obj))
        r = rnd.random()
        if r < 0.07:
            del obj[k]
        elif r < 0.12:
            obj[k + "_"] = obj[k]
        else:
            obj[k] = _mutate_json(obj[k], rnd, depth + 1)
        return obj
    if isinstance(obj, list) and obj and depth < 12 and rnd.random() < 0.85:
        i = rnd.randrange(len(obj))
        r = rnd.random()
        if r < 0.1:
            del obj[i]
        elif r < 0.2:
            obj.insert(rnd.randrange(len(obj) + 1), obj[i])
        elif r < 0.25:
            obj.extend(obj[i:i + 1] * rnd.choice([2, 10, 100, 5000]))
        else:
            obj[i] = _mutate_json(obj[i], rnd, depth + 1)
        return obj
    return _random_value(rnd, obj)


def mutate_structure(data: bytes, rnd: random.Random) -> Optional[bytes]:
    """Edit the architecture JSON or a tensor entry of a well-formed file; None if it is not one."""
    parts = _split(data)
    if parts is None:
        return None
    header, body = parts
    md = header.get("__metadata__")
    if isinstance(md, dict) and isinstance(md.get("layerprop"), str) and rnd.random() < 0.8:
        try:
            meta = json.loads(md["layerprop"])
        except (ValueError, RecursionError):
            return None
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            meta = _mutate_json(meta, rnd)
        md["layerprop"] = json.dumps(meta)
    else:
        names = [k for k in header if k != "__metadata__"]
        if not names:
            return None
        entry = header[rnd.choice(names)]
        if isinstance(entry, dict):
            if rnd.random() < 0.5 and isinstance(entry.get("dtype"), str):  # a consistent retype
                dt = rnd.choice(["F32", "F64", "I64", "U8", "BOOL", "F16", "I32"])
                size = {"F32": 4, "F64": 8, "I64": 8, "U8": 1, "BOOL": 1, "F16": 2, "I32": 4}[dt]
                entry["dtype"] = dt
                if isinstance(entry.get("shape"), list) and all(isinstance(s, int) for s in entry["shape"]) \
                        and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2:
                    b, e = entry["data_offsets"]
                    if isinstance(b, int) and isinstance(e, int) and e - b >= 0:
                        entry["shape"] = [(e - b) // size] if (e - b) % size == 0 else entry["shape"]
            else:
                _mutate_json(entry, rnd)
    hb = json.dumps(header).encode()
    if rnd.random() < 0.1:  # also poke the tensor data: NaN, Inf, negative values
        body = bytearray(body)
        if len(body) >= 8:
            i = rnd.randrange(0, len(body) - 7)
            body[i:i + 8] = rnd.choice([np.float64("nan").tobytes(), np.float32("inf").tobytes() * 2,
                                        np.float64(-1.0).tobytes(), np.float32(-2.0).tobytes() * 2])
        body = bytes(body)
    return len(hb).to_bytes(8, "little") + hb + body


def mutate_bytes(data: bytes, rnd: random.Random) -> bytes:
    """Plain byte-level edits (what the tests use in place of libFuzzer's)."""
    b = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 4, 8])):
        r = rnd.random()
        if not b:
            b = bytearray(rnd.randbytes(rnd.randrange(1, 16)))
        elif r < 0.4:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif r < 0.55:
            i = rnd.randrange(len(b))
            del b[i:i + rnd.randrange(1, 16)]
        elif r < 0.7:
            i = rnd.randrange(len(b) + 1)
            b[i:i] = rnd.randbytes(rnd.randrange(1, 8))
        elif r < 0.8:
            del b[rnd.randrange(len(b)):]
        elif r < 0.9:
            i = rnd.randrange(len(b))
            b[i:i] = rnd.choice([b"{", b"}", b",", b"[", b"]", b"\"", b"0", b"-1", b"1e999", b"NaN", b"\n", b"\x00"])
        else:
            i = rnd.randrange(len(b))
            j = rnd.randrange(len(b))
            b[i:i] = b[j:j + rnd.randrange(1, 32)]
    return bytes(b)


def mutate(data: bytes, rnd: random.Random) -> bytes:
    if rnd.random() < 0.5:
        out = mutate_structure(data, rnd)
        if out is not None:
            return out
    return mutate_bytes(data, rnd)


# ----------------------------------------------------------------------------- atheris
def _instrument(atheris: Any, obj: Any) -> None:
    """Coverage instrumentation of a function, or of every method of a class."""
    import types
    if isinstance(obj, types.FunctionType):
        atheris.instrument_func(obj)
    elif isinstance(obj, type):
        for v in vars(obj).values():
            f = getattr(v, "__func__", v)
            if isinstance(f, types.FunctionType):
                atheris.instrument_func(f)
            elif isinstance(v, property) and isinstance(v.fget, types.FunctionType):
                atheris.instrument_func(v.fget)


def main(argv: List[str]) -> None:
    import atheris
    target = "load"
    for a in list(argv):
        if a.startswith("--target="):
            target = a.split("=", 1)[1]
            argv.remove(a)
    if target not in ("load", "cli"):
        raise SystemExit(f"--target: expected load or cli, got {target!r}")
    # layerprop is often installed editable (a custom loader atheris' import hook misses):
    # instrument its modules' code after importing them.
    import layerprop
    from layerprop import cli_train, io, layers, model, optim, schedules  # noqa: F401
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("layerprop"):
            for obj in list(vars(mod).values()):
                if getattr(obj, "__module__", None) == mod.__name__:
                    _instrument(atheris, obj)
    seeds = load_seeds() if target == "load" else cli_seeds()
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = tempfile.mkdtemp(prefix=f"lp-fuzz-{target}-")
        for i, s in enumerate(seeds):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
        argv.append(corpus)
        if not any(a.startswith("-max_len") for a in argv):
            argv.append(f"-max_len={max(len(s) for s in seeds) * 2}")
    one: Callable[[bytes], None] = load_one_input if target == "load" else cli_one_input

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rnd = random.Random(seed)
        if target == "load" and rnd.random() < 0.5:
            out = mutate_structure(data, rnd)
            if out is not None and len(out) <= max_size:
                return out
        return atheris.Mutate(data, max_size)

    atheris.Setup(argv, one, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
