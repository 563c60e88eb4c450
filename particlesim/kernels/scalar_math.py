"""Functions of one number for a kernel's ``scalar_profile``: ``exp``, ``log``, ``sqrt``, ``pow``.

A :class:`~particlesim.kernels.base.RadialKernel` may give its profile as a function of one
float (``scalar_profile(u)``, ``scalar_profile_derivative(u, value)``); the CPU matmul path
then compiles it with Numba into its fused loops, where the kernel costs what a Gaussian
does. Written with these functions (and ``+ − × ÷``, comparisons, ``a if c else b``), such a
profile runs everywhere:

* in plain Python they are :mod:`math`'s (the checks made when plugins load call them so);
* inside the fused loops they are versions LLVM vectorises (``exp`` and ``log`` by range
  reduction and polynomials, ``pow(x, y) = exp(y·log x)``), where :mod:`math`'s would be one
  library call per pair and cost 10–20× more.

Every argument must lie in the function's domain (``log`` and ``pow`` of ``x > 0``, ``sqrt``
of ``x ≥ 0``): the vectorised forms do not raise, and give no meaningful number outside it.
"""

from __future__ import annotations

import math

__all__ = ["exp", "log", "pow", "sqrt"]


def exp(x: float) -> float:
    """``e^x``."""
    return math.exp(x)


def log(x: float) -> float:
    """Natural logarithm of ``x > 0``."""
    return math.log(x)


def sqrt(x: float) -> float:
    """Square root of ``x ≥ 0``."""
    return math.sqrt(x)


def pow(x: float, y: float) -> float:
    """``x^y`` for ``x > 0`` (``exp(y·log x)``)."""
    return math.exp(y * math.log(x))
