"""Fused CPU loops of the common radial layer, compiled by Numba: one loop each way.

The matmul path's common layer (one channel, no cutoff, no modulation, a fixed width) needs,
besides the three matrix products ``nn.Linear`` also does, only:

* forward: the scaled squared distances ``u[h, j] = |r_h − r_j|²/σ²`` of every pair, and
  for the Gaussian ``q_h·exp(−u)`` straight away (``distances``, ``gaussian``; a kernel
  that gives ``scalar_profile``: its ``profile_loops``);
* backward: with ``w = G ⊙ q_h·f'(u)`` (``G`` the weight gradient),
  ``∂L/∂r_h = c·(r_h Σ_j w_hj − Σ_j w_hj r_j)`` and
  ``∂L/∂r_j = c·(r_j Σ_h w_hj − Σ_h w_hj r_h)``, ``c = 2/σ²``, and the charges' gradient
  ``Σ_j G_hj f(u_hj)`` (``backward``; a scalar profile's loop makes ``f'`` from ``u`` and
  ``f`` as it goes, two rows at a time).

Written as tensor operations these take ~35 dispatched calls and several passes over the
``[M, N]`` arrays; here each direction is one read of what it needs, in loops that LLVM
vectorises (the coordinates' loop outermost, the sources' innermost). The distances come
from coordinate differences, exact near 0 and unchanged by a translation, so no centring is
needed. float32 takes a vectorisable ``exp`` (Cody–Waite reduction and a degree-6
polynomial, relative error below 3·10⁻⁷ over the kernel's range); float64 takes libm's.

The loops share their rows out between as many threads as PyTorch's own operations use
(:func:`threads`: ``torch.get_num_threads()``, which a particlesim run sets to its share of
the machine), in Numba's thread-safe threading layer: OpenMP (GNU's ``libgomp``, which most
Linux systems have) or TBB (the ``tbb`` package). Numba's OpenMP layer binds to the OpenMP
runtime PyTorch loaded (its symbols are global), so the rows run on PyTorch's own workers,
which are still spinning from the last product: no thread is added (measured with
PyTorch's Linux wheels, whose runtime is GNU's; where PyTorch brings another runtime, the
rows run on Numba's own workers beside PyTorch's, and :data:`THREADED` ``= False`` keeps
them in the calling thread). Python threads,
measured, took ~80 µs to wake and waited for a core beside those workers (Gaussian
(512, 2048, 2048): 1.34× ``nn.Linear`` against 1.22× in the calling thread alone). The
loops run in the calling thread alone where neither layer loads, for layers under
:data:`THREADED_MIN_PAIRS` pairs, and in a process forked from one that started the
threads (GNU OpenMP cannot run in such a child).

Numba ships wheels for every platform PyTorch does and compiles at first call, without a C
compiler (its LLVM is in its wheel); the compiled loops are cached beside their module, so a
later process loads them in milliseconds. Where Numba cannot be imported, :func:`available`
says so and the matmul path keeps its tensor-operation form.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import warnings
from types import ModuleType

import torch

__all__ = ["THREADED", "THREADED_MIN_PAIRS", "available", "loops", "threads"]

#: Whether the loops may share their rows out between threads (see :func:`threads`).
THREADED = True

#: Pairs (rows × columns) below which a loop runs in the calling thread alone: a region of
#: threads costs a few microseconds to start and join, more than it saves on fewer pairs.
THREADED_MIN_PAIRS = 32_768


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


def threads(pairs: int) -> int:
    """How many threads a loop over ``pairs`` pairs shares its rows out between: PyTorch's
    intra-op thread count (capped at Numba's ``NUMBA_NUM_THREADS``), or 1, the calling
    thread alone (see the module docstring for when)."""
    if pairs < THREADED_MIN_PAIRS or not THREADED:
        return 1
    wanted = torch.get_num_threads()
    if wanted < 2:
        return 1
    count = min(wanted, _threads_ready())
    if count > 1 and getattr(_THIS_THREAD, "count", None) != count:
        import numba  # (Numba's count is per thread)

        numba.set_num_threads(count)
        _THIS_THREAD.count = count
    return max(count, 1)


_THIS_THREAD = threading.local()

#: Numba's thread count (``NUMBA_NUM_THREADS``) by the process that started its threads,
#: or 0 where they cannot run there.
_STARTED: dict[int, int] = {}


def _threads_ready() -> int:
    """Numba's thread count in this process (0: its threads cannot run here), its threads
    started at the first call: in a thread-safe layer (OpenMP or TBB; not the
    ``workqueue`` layer, which aborts on calls from two threads at once), and not in a child
    forked from a process that started them."""
    pid = os.getpid()
    if pid not in _STARTED:
        _STARTED[pid] = 0 if _STARTED else _start_threads()  # (a forked child inherits it)
    return _STARTED[pid]


def _start_threads() -> int:
    import numba

    chosen = numba.config.THREADING_LAYER
    # OpenMP first: measured at 2 threads, TBB's layer made the small layer slower than one
    # thread (Gaussian (128, 784, 256): 1.83× nn.Linear, against 1.45× with OpenMP)
    layers = ("omp", "tbb") if chosen == "default" else (chosen,)
    try:
        for layer in layers:
            numba.config.THREADING_LAYER = layer
            try:
                started = loops().start_threads()
            except Exception:  # this layer does not load here
                continue
            return numba.config.NUMBA_NUM_THREADS if started in ("omp", "tbb") else 0
        return 0
    finally:
        numba.config.THREADING_LAYER = chosen
