"""particlesim.kernels.scalar_math: the functions a kernel's scalar profile is written with,
in plain Python (math's) and as the fused loops compile them (vectorised polynomials)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from particlesim.kernels import numba_cpu, scalar_math

pytestmark = pytest.mark.skipif(not numba_cpu.available(), reason="Numba is not installed")


@pytest.fixture(scope="module")
def compiled() -> object:
    """``apply(x, out, which)``: one of the functions over an array, compiled as the fused
    loops compile a kernel's scalar profile (the same fast-math flags)."""
    from numba import njit

    loops = numba_cpu.loops()

    @njit(fastmath=loops._FASTMATH)
    def apply(x, out, which):
        for i in range(x.shape[0]):
            if which == 0:
                out[i] = scalar_math.exp(x[i])
            elif which == 1:
                out[i] = scalar_math.log(x[i])
            elif which == 2:
                out[i] = scalar_math.pow(x[i], x.dtype.type(-2.5))
            else:
                out[i] = scalar_math.sqrt(x[i])

    return apply


def test_in_plain_python_they_are_math_s() -> None:
    for x in (0.0, 0.3, 2.0, 40.0):
        assert scalar_math.exp(-x) == math.exp(-x)
        assert scalar_math.sqrt(x) == math.sqrt(x)
    for x in (1e-8, 0.3, 2.0, 1e8):
        assert scalar_math.log(x) == math.log(x)
        assert scalar_math.pow(x, -1.5) == pytest.approx(x**-1.5, rel=1e-14)


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float32, 2e-7), (np.float64, 5e-14)])
def test_compiled_exp_and_log_are_accurate_over_their_whole_range(
    compiled: object, dtype: type, tolerance: float
) -> None:
    """Relative error of ``exp`` and absolute of ``log`` (relative where ``|log| > 1``) at a
    few units in the last place; ``exp`` exactly 0 where below ``2·tiny`` and infinite above
    the largest float; ``log`` of 0, infinity and a negative number as ``math`` gives them
    (−inf, inf, NaN)."""
    info = np.finfo(dtype)
    top = float(np.log(info.max))
    x = np.linspace(-1.01 * top, 1.01 * top, 400_001).astype(dtype)
    out = np.empty_like(x)
    compiled(x, out, 0)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)) if dtype is np.float32 else np.exp(x)
    normal = (want >= 2 * info.tiny) & (want <= info.max)
    assert float(np.max(np.abs(out[normal] - want[normal]) / want[normal])) < tolerance
    assert bool(np.all(out[(~normal) & (x < 0)] == 0))
    assert bool(np.all(np.isinf(out[(~normal) & (x > 0)])))
    x = np.concatenate([np.logspace(-35, 35, 400_001), [0.5, 1.0, 2.0]]).astype(dtype)
    out = np.empty_like(x)
    compiled(x, out, 1)
    want = np.log(x.astype(np.float64))
    assert float(np.max(np.abs(out - want) / np.maximum(1.0, np.abs(want)))) < tolerance
    assert out[-2] == 0.0
    specials = np.array([0.0, np.inf, -1.0], dtype=dtype)
    compiled(specials, out[:3], 1)
    assert out[0] == -np.inf and out[1] == np.inf and np.isnan(out[2])


@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float32, 5e-6), (np.float64, 1e-13)])
def test_compiled_pow_and_sqrt(compiled: object, dtype: type, tolerance: float) -> None:
    """``pow(x, y) = exp(y·log x)``: its error grows with ``|y·log x|`` (here up to 17)."""
    x = np.logspace(-3, 3, 10_001).astype(dtype)
    out = np.empty_like(x)
    compiled(x, out, 2)
    want = x.astype(np.float64) ** -2.5
    assert float(np.max(np.abs(out - want) / want)) < tolerance
    compiled(x, out, 3)
    np.testing.assert_allclose(out, np.sqrt(x), rtol=tolerance)
