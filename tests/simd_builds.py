"""Run a script in a fresh interpreter once with the AVX2 kernels and once with the portable
ones (LAYERPROP_SIMD=scalar); each run saves its outputs to the .npz file named by argv[1]."""
import os
import subprocess
import sys

import numpy as np


def outputs_of_both_builds(tmp_path, script, timeout=120):
    """(outputs of the AVX2 build, outputs of the portable build), each an NpzFile."""
    files = {}
    for simd in ("avx2", "scalar"):
        env = dict(os.environ)
        env.pop("LAYERPROP_SIMD", None)
        if simd == "scalar":
            env["LAYERPROP_SIMD"] = "scalar"
        files[simd] = tmp_path / f"{simd}.npz"
        r = subprocess.run([sys.executable, "-c", script, str(files[simd])], env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
    return np.load(files["avx2"]), np.load(files["scalar"])
