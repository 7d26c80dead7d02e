"""Run a script in a fresh interpreter once per kernel build: the default (AVX-512 where the
CPU has it), the AVX2 kernels (LAYERPROP_SIMD=avx2) and the portable ones
(LAYERPROP_SIMD=scalar); each run saves its outputs to the .npz file named by argv[1]."""
import os
import subprocess
import sys

import numpy as np


def outputs_of_builds(tmp_path, script, builds=("default", "avx2", "scalar"), timeout=120):
    """{build: outputs (an NpzFile)} of the script run under each build."""
    files = {}
    for simd in builds:
        env = dict(os.environ)
        env.pop("LAYERPROP_SIMD", None)
        if simd != "default":
            env["LAYERPROP_SIMD"] = simd
        files[simd] = tmp_path / f"{simd}.npz"
        r = subprocess.run([sys.executable, "-c", script, str(files[simd])], env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
    return {simd: np.load(f) for simd, f in files.items()}


def outputs_of_both_builds(tmp_path, script, timeout=120):
    """(outputs of the default build, outputs of the portable build), each an NpzFile. The
    default build is the AVX2 one, with the AVX-512 kernels where the CPU has them."""
    out = outputs_of_builds(tmp_path, script, ("default", "scalar"), timeout)
    return out["default"], out["scalar"]


_UPDATES = r"""
import sys
import numpy as np
import layerprop as lp
out = {}
opts = __OPTIMIZERS__
for threads in (1, 2):
    lp.set_num_threads(threads)
    for key, opt in opts.items():
        for dtype in ("float32", "float64"):
            rng = np.random.default_rng(__SEED__)
            m = lp.Sequential(lp.Linear(300, 257), lp.Tanh(), lp.Linear(257, 3), dtype=dtype, seed=0)
            m.compile(loss="cross_entropy", optimizer=opt())
            X, y = rng.standard_normal((16, 300)).astype(dtype), rng.integers(0, 3, 16)
            for _ in range(__STEPS__):  # the same gradients in every build (products may differ in the last bit)
                m.compute_gradients(X, y)
                for i in range(len(m._core.tensors())):
                    g = m._core.grad_view(i)
                    g[...] = rng.standard_normal(g.shape).astype(dtype) * 10.0 ** rng.integers(__LOW__, __HIGH__, g.shape)
                m.apply_gradients()
            for n, p in m.parameters().items():
                out[f"{key}/{dtype}/{threads}/{n}"] = np.array(p)
            for s in m._core.state_names():
                out[f"{key}/{dtype}/{threads}/{s}"] = np.array(m._core.state_view(s))
np.savez(sys.argv[1], **out)
"""


def optimizer_updates_script(optimizers, steps, exponents, seed):
    """A script for outputs_of_builds: `steps` updates by each optimizer of `optimizers` (Python
    source of a dict, name -> factory) of a 300-257-3 model (its 300 x 257 weight is split
    between threads), float32 and float64, at 1 and 2 threads, all from made-up gradients of
    sizes 10**exponents[0] to 10**(exponents[1] - 1), the same in every build; parameters and
    optimizer state are saved as "name/dtype/threads/tensor"."""
    fill = {"__OPTIMIZERS__": optimizers, "__STEPS__": str(steps), "__SEED__": str(seed),
            "__LOW__": str(exponents[0]), "__HIGH__": str(exponents[1])}
    script = _UPDATES
    for mark, text in fill.items():
        script = script.replace(mark, text)
    return script


def assert_same_update_bits(runs):
    """Every build's saved updates equal the default build's, and one thread's equal two
    threads', bit for bit; returns the default build's outputs."""
    ref = runs["default"]
    assert ref.files, "no updates were saved"
    for build, other in runs.items():
        assert sorted(other.files) == sorted(ref.files), build
        for k in ref.files:
            assert other[k].tobytes() == ref[k].tobytes(), (build, k)
    for k in ref.files:  # one thread against two
        key, dtype, threads, name = k.split("/", 3)
        if threads == "1":
            assert ref[k].tobytes() == ref[f"{key}/{dtype}/2/{name}"].tobytes(), k
    return ref
