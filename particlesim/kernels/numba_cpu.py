"""Fused CPU loops of the common radial layer, compiled by Numba: one loop each way.

The matmul path's common layer (one channel, no cutoff, no modulation, a fixed width) needs,
besides the three matrix products ``nn.Linear`` also does, only:

* forward: the scaled squared distances ``u[h, j] = |r_h − r_j|²/σ²`` of every pair, and
  for the Gaussian ``exp(−u)`` straight away (``distances``, ``gaussian``);
* backward: with ``w = G ⊙ f'(u)`` (``G`` the charge-free weight gradient),
  ``∂L/∂r_h = c·(r_h Σ_j w_hj − Σ_j w_hj r_j)`` and
  ``∂L/∂r_j = c·(r_j Σ_h w_hj − Σ_h w_hj r_h)``, ``c = 2/σ²`` (``backward``).

Written as tensor operations these take ~35 dispatched calls and several passes over the
``[M, N]`` arrays; here each direction is one read of what it needs, in loops that LLVM
vectorises (the coordinates' loop outermost, the sources' innermost). The distances come
from coordinate differences, exact near 0 and unchanged by a translation, so no centring is
needed. float32 takes a vectorisable ``exp`` (Cody–Waite reduction and a degree-6
polynomial, relative error below 3·10⁻⁷ over the kernel's range); float64 takes libm's.

The loops run in the calling thread. A second thread of this module's own, measured at
2 threads, made the layer slower: PyTorch's OpenMP workers spin on the cores for a while
after each of its products, and a thread woken beside them waits for a core (Gaussian
(512, 2048, 2048): 1.34× ``nn.Linear`` against 1.22× in the calling thread).

Numba ships wheels for every platform PyTorch does and compiles at first call, without a C
compiler (its LLVM is in its wheel); the compiled loops are cached beside their module, so a
later process loads them in milliseconds. Where Numba cannot be imported, :func:`available`
says so and the matmul path keeps its tensor-operation form.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

__all__ = ["available", "loops"]


@functools.cache
def available() -> bool:
    """Whether the fused loops can run: Numba imports and the loops' module loads (it is
    imported here, at the first layer call: importing Numba takes ~0.3 s, which a process
    without a particle layer never pays). Where Numba is installed but the loops cannot load
    (e.g. no writable folder for their cache), one warning says so and why."""
    try:
        import numba  # noqa: F401
    except Exception:  # not installed, or built against another NumPy
        return False
    try:
        loops()
    except Exception as exc:
        warnings.warn(
            f"particlesim: the fused CPU loops are off ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); the particle layer runs its tensor operations",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


@functools.cache
def loops() -> ModuleType:
    """The compiled loops (:mod:`particlesim.kernels._numba_loops`)."""
    return importlib.import_module("particlesim.kernels._numba_loops")
