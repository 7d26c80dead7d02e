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
