"""Large buffers (4 MB and more: L's weights and activations) are asked to be backed by 2 MB pages
(madvise MADV_HUGEPAGE; docs/threads.md). The kernel may still give small pages (fragmentation,
THP off), so the test checks the request, which is deterministic: the VM_HUGEPAGE flag ("hg")
on the mapping that holds a large parameter, and its absence with LAYERPROP_HUGE_PAGES=0."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise and smaps")

CODE = """
import numpy as np, layerprop as lp
m = lp.Sequential(lp.Linear(2048, 2048), lp.ReLU(), lp.Linear(2048, 16))
big = m.parameters()['0.weight'].ctypes.data      # 16 MB of parameters

def flags(addr):
    lo = hi = None
    for line in open('/proc/self/smaps'):
        head = line.split()
        if '-' in head[0] and len(head) >= 5 and ':' not in head[0]:
            a, b = (int(x, 16) for x in head[0].split('-'))
            lo, hi = a, b
        elif head[0] == 'VmFlags:' and lo is not None and lo <= addr < hi:
            return head[1:]
    return None

x = np.ones((64, 2048), np.float32)
m.compile('mse', lp.Adam())
m.train_step(x, np.zeros((64, 16), np.float32))
y = m.predict(x)
print('hg' in flags(big), bool(np.isfinite(y).all()))
"""


def run(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_large_buffers_ask_for_huge_pages():
    big, finite = run({})
    assert big == "True", "the 16 MB parameter store was not madvised for huge pages"
    assert finite == "True"


def test_huge_pages_switch_off():
    big, _finite = run({"LAYERPROP_HUGE_PAGES": "0"})
    assert big == "False"
