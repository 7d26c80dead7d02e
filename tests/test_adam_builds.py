"""Adam and AdamW give the same bits in every kernel build and on any thread count.

The AVX-512 build computes the float quotient sqrt(v) / bias_correction2 ** 0.5 as a product
in double with the divisor's reciprocal (cpp/kernels/optim/adam.hpp explains why that is the
same number); the other builds divide. The first test runs whole updates under each build;
the second checks the identity itself on a sweep of float bit patterns."""
import numpy as np
import pytest

from simd_builds import assert_same_update_bits, optimizer_updates_script, outputs_of_builds  # noqa: E402

_OPTS = """{
    "adam": lambda: lp.Adam(lr=1e-3),
    "adam_l2": lambda: lp.Adam(lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05),
    "adamw": lambda: lp.AdamW(lr=1e-2, weight_decay=0.1),
    "adam_b2_small": lambda: lp.Adam(lr=1e-3, betas=(0.9, 0.3)),      # correction reaches 1 at once
    "adam_b2_near_1": lambda: lp.Adam(lr=1e-3, betas=(0.5, 0.999999)),  # correction about 1e-3
}"""


def test_adam_same_bits_in_every_build_and_thread_count(tmp_path):
    """Four updates from gradients of 1e-30 to 1e12 in size."""
    runs = outputs_of_builds(tmp_path, optimizer_updates_script(_OPTS, 4, (-30, 13), seed=1), timeout=300)
    ref = assert_same_update_bits(runs)
    assert sorted(runs) == ["avx2", "default", "scalar"]
    assert len(ref.files) == 5 * 2 * 2 * 6  # 4 parameters and the 2 state vectors each
    # The updates did something: no state is all zero.
    assert all(np.any(ref[k] != 0) for k in ref.files if "exp_avg" in k)


def _divisors():
    """The float bias corrections sqrt(1 - beta2 ** t) of a few betas and steps, the largest
    float below 1 (all-ones significand), and random ones down to 1e-8."""
    c = []
    for b2 in (0.999, 0.99, 0.9, 0.5, 0.999999, 0.3):
        for t in (1, 2, 3, 5, 10, 100, 1000, 10000):
            c.append(np.float32(np.sqrt(1.0 - b2 ** t)))
    c += [np.float32(1.0), np.nextafter(np.float32(1), np.float32(0)), np.float32(0.75),
          np.nextafter(np.float32(0.5), np.float32(1))]
    rng = np.random.default_rng(7)
    c += list((10.0 ** rng.uniform(-8, 0, 24)).astype(np.float32))
    return sorted(set(float(x) for x in c))


def _sweep():
    """Non-negative float32 values: every 4099th bit pattern up to +inf (all exponents), every
    subnormal pattern below 2^16, the largest finite floats, and a million random patterns."""
    rng = np.random.default_rng(11)
    bits = np.concatenate([
        np.arange(0, 0x7F800001, 4099, dtype=np.uint64),
        np.arange(0, 1 << 16, dtype=np.uint64),
        np.arange(0x7F7F0000, 0x7F800001, dtype=np.uint64),
        rng.integers(0, 0x7F800001, 1 << 20, dtype=np.uint64),
    ]).astype(np.uint32)
    return bits.view(np.float32)


@pytest.mark.parametrize("c", _divisors())
def test_float_quotient_equals_double_product_with_reciprocal(c):
    """float(double(s) * (1 / double(c))) == s / c (IEEE float division) for each float s."""
    s = _sweep()
    c32 = np.float32(c)
    with np.errstate(over="ignore"):
        want = s / c32
        got = (s.astype(np.float64) * (1.0 / np.float64(c32))).astype(np.float32)
    bad = np.flatnonzero(want.view(np.uint32) != got.view(np.uint32))
    assert bad.size == 0, (c, s[bad[:5]], want[bad[:5]], got[bad[:5]])
