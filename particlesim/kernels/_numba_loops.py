"""The compiled loops of :mod:`particlesim.kernels.numba_cpu` (imported at its first use).

Each loop is compiled by Numba at its first call for the dtypes it meets and cached beside
this file (``__pycache__``), so a later process loads it in milliseconds.
"""

from __future__ import annotations

import functools
from types import FunctionType, ModuleType, SimpleNamespace
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from particlesim.kernels import scalar_math

# no 'nnan'/'ninf': a position that overflows its square must not turn into garbage
_FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}


def _bitcast(source: Any, target: Any, target_ir: Any) -> Any:
    """An intrinsic reinterpreting the bits of a ``source`` number as a ``target`` one."""

    @intrinsic
    def cast(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.bitcast(args[0], target_ir)

        return target(source), codegen

    return cast


_bits_as_float32 = _bitcast(types.int32, types.float32, ir.FloatType())
_float32_bits = _bitcast(types.float32, types.int32, ir.IntType(32))
_bits_as_float64 = _bitcast(types.int64, types.float64, ir.DoubleType())
_float64_bits = _bitcast(types.float64, types.int64, ir.IntType(64))

_F = np.float32
# exp is exactly 0 from here down (below 2·finfo.tiny: no subnormal enters a product with
# the kernel, where they halve the speed of x kᵀ), and infinite above the largest float
_CUT32 = _F(np.log(2.0 * np.finfo(np.float32).tiny))
_CUT64 = float(np.log(2.0 * np.finfo(np.float64).tiny))
_OVER32 = _F(np.log(np.finfo(np.float32).max))
_OVER64 = float(np.log(np.finfo(np.float64).max))


@njit(fastmath=_FASTMATH, error_model="numpy")
def _exp32(x: Any) -> Any:
    """Cephes' ``expf``: ``x = k·ln 2 + r`` (ln 2 in two parts), a degree-6 polynomial of
    ``r``, times ``2^k`` built from its bits."""
    y = min(max(x, _CUT32), _OVER32)
    k = np.floor(y * _F(1.44269504088896341) + _F(0.5))
    r = (y - k * _F(0.693359375)) + k * _F(2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    p = p * r * r + r + _F(1.0)
    # 2^k as 2·2^(k−1): a normal float over the whole range, k = −125 … 128
    out = p * _bits_as_float32((np.int32(k) + np.int32(126)) << np.int32(23)) * _F(2.0)
    out = out if x > _CUT32 else _F(0.0)
    return out if x <= _OVER32 else _F(np.inf)


@njit(fastmath=_FASTMATH, error_model="numpy")
def _exp64(x: Any) -> Any:
    """Cephes' ``exp``: the same reduction, then a Padé form ``1 + 2P(r)/(Q(r) − P(r))``."""
    y = min(max(x, _CUT64), _OVER64)
    k = np.floor(y * 1.4426950408889634073599 + 0.5)
    r = (y - k * 6.93145751953125e-1) - k * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0)
    qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr) * rr
    qx = qx + 2.27265548208155028766e-1 * rr + 2.0
    scale = _bits_as_float64((np.int64(k) + np.int64(1022)) << np.int64(52)) * 2.0
    out = (1.0 + 2.0 * px / (qx - px)) * scale
    out = out if x > _CUT64 else 0.0
    return out if x <= _OVER64 else np.inf


@njit(fastmath=_FASTMATH, error_model="numpy")
def _log32(x: Any) -> Any:
    """Cephes' ``logf``: ``x = m·2^e`` from its bits (``m`` in ``[√½, √2)``), a degree-8
    polynomial of ``m − 1``, plus ``e·ln 2`` (in two parts)."""
    bits = _float32_bits(x)
    e = ((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126)
    m = _bits_as_float32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))  # [½, 1)
    low = m < _F(0.707106781186547524)
    e = e - np.int32(1) if low else e
    m = (m + m if low else m) - _F(1.0)
    z = m * m
    p = _F(7.0376836292e-2)
    p = p * m - _F(1.1514610310e-1)
    p = p * m + _F(1.1676998740e-1)
    p = p * m - _F(1.2420140846e-1)
    p = p * m + _F(1.4249322787e-1)
    p = p * m - _F(1.6668057665e-1)
    p = p * m + _F(2.0000714765e-1)
    p = p * m - _F(2.4999993993e-1)
    p = p * m + _F(3.3333331174e-1)
    ef = _F(e)
    out = m + (p * m * z - ef * _F(2.12194440e-4) - _F(0.5) * z) + ef * _F(0.693359375)
    out = out if x < _F(np.inf) else _F(np.inf)
    return out if x > _F(0.0) else (_F(-np.inf) if x == _F(0.0) else _F(np.nan))


@njit(fastmath=_FASTMATH, error_model="numpy")
def _log64(x: Any) -> Any:
    """Cephes' ``log``: the same split, then ``m − 1`` through a rational form ``P/Q``."""
    bits = _float64_bits(x)
    e = ((bits >> np.int64(52)) & np.int64(0x7FF)) - np.int64(1022)
    m = _bits_as_float64((bits & np.int64(0x000FFFFFFFFFFFFF)) | np.int64(0x3FE0000000000000))
    low = m < 0.70710678118654752440
    e = e - np.int64(1) if low else e
    m = (m + m if low else m) - 1.0
    z = m * m
    p = (
        (
            (
                (1.01875663804580931796e-4 * m + 4.97494994976747001425e-1) * m
                + 4.70579119878881725854e0
            )
            * m
            + 1.44989225341610930846e1
        )
        * m
        + 1.79368678507819816313e1
    ) * m + 7.70838733755885391666e0
    q = (
        (
            ((m + 1.12873587189167450590e1) * m + 4.52279145837532221105e1) * m
            + 8.29875266912776603211e1
        )
        * m
        + 7.11544750618563894466e1
    ) * m
    q = q + 2.31251620126765340583e1
    ef = float(e)
    out = m + (m * (z * p / q) - ef * 2.121944400546905827679e-4 - 0.5 * z)
    out = out + ef * 0.693359375
    out = out if x < np.inf else np.inf
    return out if x > 0.0 else (-np.inf if x == 0.0 else np.nan)


def _vectorised(function: Any, float32_form: Any, float64_form: Any) -> None:
    """Compile calls of ``function`` (one float) to the forms LLVM vectorises, in the
    argument's precision (float32 forms where the argument is float32)."""

    @overload(function, inline="always", fastmath=_FASTMATH)
    def implementation(x):
        if x == types.float32:
            return lambda x: float32_form(x)
        if isinstance(x, types.Float | types.Integer):
            return lambda x: float64_form(float(x))
        return None


def _single(function: Any, float32_form: Any) -> None:
    """Compile calls of ``function`` to the float32 form whatever the argument's precision."""

    @overload(function, inline="always", fastmath=_FASTMATH)
    def implementation(x):
        if isinstance(x, types.Float | types.Integer):
            return lambda x: float32_form(np.float32(x))
        return None


_vectorised(scalar_math.exp, _exp32, _exp64)  # (exactly 0 below 2·tiny: the kernel's too)
_vectorised(scalar_math.log, _log32, _log64)


@overload(scalar_math.sqrt, inline="always", fastmath=_FASTMATH)
def _sqrt(x):
    return lambda x: np.sqrt(x)


@overload(scalar_math.pow, inline="always", fastmath=_FASTMATH)
def _pow(x, y):
    return lambda x, y: scalar_math.exp(y * scalar_math.log(x))


def _twin(function: Any) -> Any:
    """A new function object that calls ``function`` (Numba keys its overloads by object)."""

    @functools.wraps(function)
    def twin(*args: float) -> float:
        return function(*args)

    return twin


def _float32_math() -> ModuleType:
    """:mod:`~particlesim.kernels.scalar_math` in float32, for a float32 layer's profile.

    A profile's number literals are float64 (``1.0 + u / 3.0``), so Numba would compute the
    profile of a float32 ``u`` in float64, its divisions and its ``exp`` and ``log`` (a
    division each) ~4× slower than in float32. A float32 layer's loop compiles the profile
    with float32 literals and against this module (:func:`_in_float32`)."""
    module = ModuleType("particlesim.kernels.scalar_math_float32")
    # twins of scalar_math's functions (the same in Python), to hang float32 forms on
    exp, log, pow = (_twin(getattr(scalar_math, name)) for name in ("exp", "log", "pow"))
    _single(exp, _exp32)
    _single(log, _log32)

    @overload(pow, inline="always", fastmath=_FASTMATH)
    def _pow32(x, y):
        return lambda x, y: _exp32(np.float32(y) * _log32(np.float32(x)))

    module.exp, module.log, module.pow, module.sqrt = exp, log, pow, scalar_math.sqrt
    return module


_SCALAR_MATH32 = _float32_math()


def _in_float32(function: Any) -> Any:
    """``function`` computed in float32: its float literals made float32 numbers, and its
    references to :mod:`~particlesim.kernels.scalar_math` (the module, or its functions
    imported by name) :data:`_SCALAR_MATH32`'s. (An integer literal stays one: ``u ** 2``
    is still two multiplications, and ``2 * u`` computes in float64.)"""
    replace = {id(scalar_math): _SCALAR_MATH32}
    for name in scalar_math.__all__:
        replace[id(getattr(scalar_math, name))] = getattr(_SCALAR_MATH32, name)
    namespace = dict(function.__globals__)
    for name, value in function.__globals__.items():
        namespace[name] = replace.get(id(value), value)
    code = function.__code__
    constants = tuple(np.float32(c) if type(c) is float else c for c in code.co_consts)
    return FunctionType(
        code.replace(co_consts=constants),
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


# error_model="numpy": a division by 0 gives inf, as in NumPy, instead of raising as in
# Python, whose check of every divisor keeps LLVM from vectorising the loop
_FLAGS = {"nogil": True, "fastmath": _FASTMATH, "error_model": "numpy"}
_jit = functools.partial(njit, **_FLAGS, cache=True)
# the drivers that share rows out between threads (prange over row ranges); a row range
# itself is a separate compiled function, as vectorised as in the calling thread
_jit_threads = functools.partial(njit, **_FLAGS, cache=True, parallel=True)


@njit(inline="always")
def _rows_of(chunk: int, chunks: int, rows: int) -> tuple[int, int]:
    """The ``[start, stop)`` rows of ``chunk`` of ``chunks`` (even shares)."""
    return chunk * rows // chunks, (chunk + 1) * rows // chunks


#: Coordinates the loops take in one pass over the pairs: positions of up to this many
#: dimensions are padded with zeros to it (a zero adds nothing to a distance or a gradient).
PADDED_DIMENSIONS = 3

#: Above :data:`PADDED_DIMENSIONS`, coordinates are taken this many per pass (padded with
#: zeros to a multiple of it): D = 8 in two passes instead of eight.
COORDINATES_PER_PASS = 4


@njit(nogil=True, cache=True)  # no fast-math: it may assume every number finite
def prepare(rows: Any, columns: Any, charges: Any) -> Any:
    """What a forward needs before its loop, in one call (each call from Python costs
    microseconds, more right after a pass over a large array): ``(rows [R, P], columns
    transposed [P, C], whether all positions are finite, whether no charge is 0)``.

    ``P`` = 3 up to D = 3, else ``D`` rounded up to a multiple of 4 (zeros after ``D``): the
    positions' private copies for the backward (a later in-place change of a parameter
    cannot reach them) in the layouts the loops read. ``charges``: ``[R]``, or ``[0]``."""
    D = rows.shape[1]
    step = COORDINATES_PER_PASS
    P = PADDED_DIMENSIONS if D <= PADDED_DIMENSIONS else -(-D // step) * step
    check = rows.dtype.type(0)  # v·0 is NaN for a NaN or infinite v, else 0
    rows_copy = np.zeros((rows.shape[0], P), dtype=rows.dtype)
    for i in range(rows.shape[0]):
        for d in range(D):
            v = rows[i, d]
            check += v * 0
            rows_copy[i, d] = v
    columns_t = np.zeros((P, columns.shape[0]), dtype=columns.dtype)
    for i in range(columns.shape[0]):
        for d in range(D):
            v = columns[i, d]
            check += v * 0
            columns_t[d, i] = v
    nonzero = True
    for i in range(charges.shape[0]):
        nonzero = nonzero and charges[i] != 0
    return rows_copy, columns_t, check == 0, nonzero


@_jit
def _squared_distances(rows: Any, columns_t: Any, i: int, scale: Any, out_row: Any) -> None:
    """``out_row[j] = scale·|r_i − r_j|²``: three coordinates in one pass, or (above
    :data:`PADDED_DIMENSIONS`) four a pass over the columns, scaled in the last."""
    if columns_t.shape[0] == PADDED_DIMENSIONS:
        c0, c1, c2 = columns_t[0], columns_t[1], columns_t[2]
        r0, r1, r2 = rows[i, 0], rows[i, 1], rows[i, 2]
        for j in range(out_row.shape[0]):
            a, b, c = c0[j] - r0, c1[j] - r1, c2[j] - r2
            out_row[j] = (a * a + b * b + c * c) * scale
        return
    for d in range(0, columns_t.shape[0], COORDINATES_PER_PASS):
        c0, c1, c2, c3 = columns_t[d], columns_t[d + 1], columns_t[d + 2], columns_t[d + 3]
        r0, r1, r2, r3 = rows[i, d], rows[i, d + 1], rows[i, d + 2], rows[i, d + 3]
        first, last = d == 0, d + COORDINATES_PER_PASS == columns_t.shape[0]
        for j in range(out_row.shape[0]):
            a, b, c, e = c0[j] - r0, c1[j] - r1, c2[j] - r2, c3[j] - r3
            part = a * a + b * b + c * c + e * e
            part = part if first else out_row[j] + part
            out_row[j] = part * scale if last else part


@_jit
def _distance_rows(rows: Any, columns_t: Any, scale: Any, out: Any, start: int, stop: int) -> None:
    for i in range(start, stop):
        _squared_distances(rows, columns_t, i, scale, out[i])


@_jit
def _distances(rows: Any, columns_t: Any, scale: Any, out: Any) -> None:
    _distance_rows(rows, columns_t, scale, out, 0, rows.shape[0])


@_jit_threads
def _distances_threads(rows: Any, columns_t: Any, scale: Any, out: Any, chunks: int) -> None:
    for chunk in prange(chunks):
        start, stop = _rows_of(chunk, chunks, rows.shape[0])
        _distance_rows(rows, columns_t, scale, out, start, stop)


def distances(rows: Any, columns_t: Any, scale: Any, out: Any, chunks: int = 1) -> None:
    """``out[i, j] = scale · |r_i − r_j|²`` (``rows [R, P]``, ``columns_t [P, C]``,
    ``out [R, C]``), the rows shared out between ``chunks`` threads."""
    if chunks > 1:
        _distances_threads(rows, columns_t, scale, out, chunks)
    else:
        _distances(rows, columns_t, scale, out)


@_jit
def _gaussian_rows(
    rows: Any, columns_t: Any, minus_scale: Any, charges: Any, out: Any, start: int, stop: int
) -> None:
    # (a row's distances, then exp over it while it is in the core's cache: as fast as one
    # pass making both, measured at 256 × 784)
    one = out.dtype.type(1)
    zero = out.dtype.type(0)
    tiny = np.finfo(out.dtype).tiny
    for i in range(start, stop):
        row = out[i]
        q = charges[i] if charges.shape[0] > 0 else one
        _squared_distances(rows, columns_t, i, minus_scale, row)
        for j in range(row.shape[0]):
            value = q * scalar_math.exp(row[j])
            row[j] = value if abs(value) >= tiny else zero


@_jit
def _gaussian(rows: Any, columns_t: Any, minus_scale: Any, charges: Any, out: Any) -> None:
    _gaussian_rows(rows, columns_t, minus_scale, charges, out, 0, rows.shape[0])


@_jit_threads
def _gaussian_threads(
    rows: Any, columns_t: Any, minus_scale: Any, charges: Any, out: Any, chunks: int
) -> None:
    for chunk in prange(chunks):
        start, stop = _rows_of(chunk, chunks, rows.shape[0])
        _gaussian_rows(rows, columns_t, minus_scale, charges, out, start, stop)


def gaussian(
    rows: Any, columns_t: Any, minus_scale: Any, charges: Any, out: Any, chunks: int = 1
) -> None:
    """``out[i, j] = q_i·exp(minus_scale · |r_i − r_j|²)``, exactly 0 where below ``tiny``
    (no subnormal number enters the products with ``W``, where they halve their speed);
    ``charges`` ``[R]``, or ``[0]``: none (``q = 1``); the rows shared out between
    ``chunks`` threads."""
    if chunks > 1:
        _gaussian_threads(rows, columns_t, minus_scale, charges, out, chunks)
    else:
        _gaussian(rows, columns_t, minus_scale, charges, out)


@_jit
def _accumulate_pair(
    d_a: Any,
    g_a: Any,
    d_b: Any,
    g_b: Any,
    i: int,
    k: int,
    second: bool,
    rows: Any,
    columns_t: Any,
    c: Any,
    grad_rows: Any,
    row_sums: Any,
    sums: Any,
) -> None:
    """Rows ``i`` and ``k`` (``second``: ``k`` is a row of its own) of the backward for up
    to three coordinates, in one pass making ``w = g ⊙ d`` of both as it goes: their
    ``grad_rows``, their ``row_sums`` (where it has rows) and their part of the columns'
    sums (``sums [4, C]``). (Two rows share each load of the columns and each update of
    their sums: 42 µs against 67 µs a row at a time at 256 × 784.)"""
    zero = grad_rows.dtype.type(0)
    total, s0, s1, s2 = sums[3], sums[0], sums[1], sums[2]
    c0, c1, c2 = columns_t[0], columns_t[1], columns_t[2]
    a0, a1, a2 = rows[i, 0], rows[i, 1], rows[i, 2]
    b0, b1, b2 = rows[k, 0], rows[k, 1], rows[k, 2]
    sum_a = dot_a0 = dot_a1 = dot_a2 = zero
    sum_b = dot_b0 = dot_b1 = dot_b2 = zero
    for j in range(columns_t.shape[1]):
        wa = g_a[j] * d_a[j]
        wb = g_b[j] * d_b[j]
        x0, x1, x2 = c0[j], c1[j], c2[j]
        sum_a += wa
        sum_b += wb
        dot_a0 += wa * x0
        dot_a1 += wa * x1
        dot_a2 += wa * x2
        dot_b0 += wb * x0
        dot_b1 += wb * x1
        dot_b2 += wb * x2
        total[j] += wa + wb
        s0[j] += wa * a0 + wb * b0
        s1[j] += wa * a1 + wb * b1
        s2[j] += wa * a2 + wb * b2
    grad_rows[i, 0] = c * (a0 * sum_a - dot_a0)
    grad_rows[i, 1] = c * (a1 * sum_a - dot_a1)
    grad_rows[i, 2] = c * (a2 * sum_a - dot_a2)
    if row_sums.shape[0] > 0:
        row_sums[i] = sum_a
    if second:
        grad_rows[k, 0] = c * (b0 * sum_b - dot_b0)
        grad_rows[k, 1] = c * (b1 * sum_b - dot_b1)
        grad_rows[k, 2] = c * (b2 * sum_b - dot_b2)
        if row_sums.shape[0] > 0:
            row_sums[k] = sum_b


@_jit
def _accumulate_row(
    d_row: Any,
    g_row: Any,
    i: int,
    rows: Any,
    columns_t: Any,
    c: Any,
    grad_rows: Any,
    row_sums: Any,
    sums: Any,
    w: Any,
) -> None:
    """Row ``i`` of the backward above three coordinates: ``w = g ⊙ d`` in a first pass,
    then four coordinates a pass. (One loop for every D, its first pass making ``w``,
    measured 25 µs slower than the pairs' loop up to three: the test of which pass it is,
    inside the loop, costs more than a second loop.)"""
    P, C = columns_t.shape
    zero = grad_rows.dtype.type(0)
    total = sums[P]
    row_sum = zero
    for j in range(C):
        wj = g_row[j] * d_row[j]
        w[j] = wj
        row_sum += wj
        total[j] += wj
    for d in range(0, P, COORDINATES_PER_PASS):
        a0, a1, a2, a3 = columns_t[d], columns_t[d + 1], columns_t[d + 2], columns_t[d + 3]
        r0, r1, r2, r3 = rows[i, d], rows[i, d + 1], rows[i, d + 2], rows[i, d + 3]
        t0, t1, t2, t3 = sums[d], sums[d + 1], sums[d + 2], sums[d + 3]
        dot0 = dot1 = dot2 = dot3 = zero
        for j in range(C):
            wj = w[j]
            dot0 += wj * a0[j]
            dot1 += wj * a1[j]
            dot2 += wj * a2[j]
            dot3 += wj * a3[j]
            t0[j] += wj * r0
            t1[j] += wj * r1
            t2[j] += wj * r2
            t3[j] += wj * r3
        grad_rows[i, d] = c * (r0 * row_sum - dot0)
        grad_rows[i, d + 1] = c * (r1 * row_sum - dot1)
        grad_rows[i, d + 2] = c * (r2 * row_sum - dot2)
        grad_rows[i, d + 3] = c * (r3 * row_sum - dot3)
    if row_sums.shape[0] > 0:
        row_sums[i] = row_sum


@_jit
def _backward_rows(
    rows: Any,
    columns_t: Any,
    derivative: Any,
    grad_weight: Any,
    c: Any,
    grad_rows: Any,
    row_sums: Any,
    sums: Any,
    scratch: Any,
    start: int,
    stop: int,
) -> None:
    """Rows ``[start, stop)`` of :func:`backward`: their ``grad_rows`` and ``row_sums``, and
    their part of the columns' sums (``sums [P+1, C]``, zeroed here; ``scratch [C]``). Up to
    three coordinates two rows a pass, an odd last row paired with zeros (``scratch``)."""
    P = columns_t.shape[0]
    zero = derivative.dtype.type(0)
    sums[:] = zero
    if P == PADDED_DIMENSIONS:
        scratch[:] = zero
        for i in range(start, stop, 2):
            second = i + 1 < stop
            k = i + 1 if second else i
            d_b = derivative[k] if second else scratch
            g_b = grad_weight[k] if second else scratch
            _accumulate_pair(
                derivative[i],
                grad_weight[i],
                d_b,
                g_b,
                i,
                k,
                second,
                rows,
                columns_t,
                c,
                grad_rows,
                row_sums,
                sums,
            )
        return
    for i in range(start, stop):
        _accumulate_row(
            derivative[i],
            grad_weight[i],
            i,
            rows,
            columns_t,
            c,
            grad_rows,
            row_sums,
            sums,
            scratch,
        )


@_jit
def _backward_outputs(
    columns_t: Any, sums: Any, c: Any, grad_rows: Any, row_sums: Any, charges: Any, D: int
) -> Any:
    """``(grad_rows, grad_columns, grad_charges)``: the columns' gradients from the sums of
    every row range (``sums [chunks, P+1, C]``), both position gradients with their ``D``
    coordinates (the padding dropped), and the charges' gradient: ``row_sums / charges``,
    or (``charges`` ``[0]``) ``row_sums`` as they are (``[0]`` where not wanted)."""
    P, C = columns_t.shape
    grad_columns = np.empty((C, D), dtype=grad_rows.dtype)
    for j in range(C):
        total = sums[0, P, j]
        for chunk in range(1, sums.shape[0]):
            total += sums[chunk, P, j]
        for d in range(D):
            part = sums[0, d, j]
            for chunk in range(1, sums.shape[0]):
                part += sums[chunk, d, j]
            grad_columns[j, d] = c * (columns_t[d, j] * total - part)
    grad_charges = row_sums
    if charges.shape[0] > 0:
        grad_charges = np.empty(charges.shape[0], dtype=grad_rows.dtype)
        for i in range(charges.shape[0]):
            grad_charges[i] = row_sums[i] / charges[i]
    if D == P:
        return grad_rows, grad_columns, grad_charges
    return np.ascontiguousarray(grad_rows[:, :D]), grad_columns, grad_charges


@_jit
def _backward_buffers(
    rows: Any, columns_t: Any, like: Any, charges: Any, chunks: int, scratch_rows: int
) -> Any:
    """``(grad_rows [R, P], row_sums [R or 0], sums [chunks, P+1, C], scratch [chunks,
    scratch_rows, C])`` of a backward over ``chunks`` row ranges, in ``like``'s dtype."""
    P, C = columns_t.shape
    R = rows.shape[0]
    return (
        np.empty((R, P), dtype=like.dtype),
        np.empty(R if charges.shape[0] > 0 else 0, dtype=like.dtype),
        np.empty((chunks, P + 1, C), dtype=like.dtype),
        np.empty((chunks, scratch_rows, C), dtype=like.dtype),
    )


@_jit
def _backward(
    rows: Any,
    columns_t: Any,
    derivative: Any,
    grad_weight: Any,
    c: Any,
    charges: Any,
    D: int,
) -> Any:
    R = rows.shape[0]
    grad_rows, row_sums, sums, w = _backward_buffers(rows, columns_t, derivative, charges, 1, 1)
    _backward_rows(
        rows, columns_t, derivative, grad_weight, c, grad_rows, row_sums, sums[0], w[0, 0], 0, R
    )
    return _backward_outputs(columns_t, sums, c, grad_rows, row_sums, charges, D)


@_jit_threads
def _backward_threads(
    rows: Any,
    columns_t: Any,
    derivative: Any,
    grad_weight: Any,
    c: Any,
    charges: Any,
    D: int,
    chunks: int,
) -> Any:
    R = rows.shape[0]
    grad_rows, row_sums, sums, w = _backward_buffers(
        rows, columns_t, derivative, charges, chunks, 1
    )
    for chunk in prange(chunks):
        start, stop = _rows_of(chunk, chunks, R)
        part, scratch = sums[chunk], w[chunk, 0]
        _backward_rows(
            rows,
            columns_t,
            derivative,
            grad_weight,
            c,
            grad_rows,
            row_sums,
            part,
            scratch,
            start,
            stop,
        )
    return _backward_outputs(columns_t, sums, c, grad_rows, row_sums, charges, D)


def backward(
    rows: Any,
    columns_t: Any,
    derivative: Any,
    grad_weight: Any,
    c: Any,
    charges: Any,
    D: int,
    chunks: int = 1,
) -> Any:
    """``(grad_rows [R, D], grad_columns [C, D], grad_charges)``: both position gradients
    from one read of ``w = grad_weight ⊙ derivative``,
    ``grad_rows[i] = c·(r_i Σ_j w_ij − Σ_j w_ij r_j)`` and
    ``grad_columns[j] = c·(r_j Σ_i w_ij − Σ_i w_ij r_i)``, the columns' sums gathered a row
    at a time (``Σ_i w_ij r_id`` for each ``d``, then ``Σ_i w_ij``) by each of ``chunks``
    threads over its share of the rows, then added; and, where ``charges`` has rows (the
    Gaussian's folded ``W = q ⊙ k``), ``grad_charges[i] = Σ_j w_ij / q_i`` (else ``[0]``).
    The outputs are new arrays (no call from Python allocates them)."""
    if chunks > 1:
        return _backward_threads(rows, columns_t, derivative, grad_weight, c, charges, D, chunks)
    return _backward(rows, columns_t, derivative, grad_weight, c, charges, D)


@functools.cache
def profile_loops(profile: Any, derivative: Any, single: bool) -> Any:
    """The loops of a kernel that gives its profile as functions of one number
    (``scalar_profile(u)``, ``scalar_profile_derivative(u, value)``), compiled for it once a
    process (a loop holding other compiled functions is not cached on disk; the threads'
    form at its first call with more than one thread); ``single``: for float32 arrays, with
    float32 transcendental functions (:func:`_in_float32`). Like the Gaussian's:

    * ``forward(rows, columns_t, scale, charges, out, chunks=1)`` writes
      ``out = q_i·f(u)``, ``u = scale·|r_i − r_j|²`` (``charges`` ``[0]``: ``q = 1``), a row
      at a time (its distances, then the profile over it while it is in the core's cache);
    * ``backward(rows, columns_t, kernel, grad_weight, scale, c, charges, D, chunks=1)``
      gives :func:`backward`'s outputs with ``w = grad_weight ⊙ q·f'(u, f)``, the
      derivative made from the distances and the kernel as it goes (never kept: a second
      ``[M, N]`` array written and read back cost more), and the charges' gradient
      ``Σ_j grad_weight_ij f(u_ij)``.
    """
    if single:
        profile, derivative = _in_float32(profile), _in_float32(derivative)
    compile_profile = njit(inline="always", fastmath=_FASTMATH, error_model="numpy")
    f, f_prime = compile_profile(profile), compile_profile(derivative)

    @njit(**_FLAGS)
    def forward_rows(
        rows: Any, columns_t: Any, scale: Any, charges: Any, out: Any, start: int, stop: int
    ) -> None:
        zero = out.dtype.type(0)
        tiny = np.finfo(out.dtype).tiny  # below it: 0 (subnormals slow the products)
        for i in range(start, stop):
            row = out[i]
            q = charges[i] if charges.shape[0] > 0 else out.dtype.type(1)
            _squared_distances(rows, columns_t, i, scale, row)
            for j in range(row.shape[0]):
                value = q * f(row[j])
                row[j] = value if abs(value) >= tiny else zero

    @njit(**_FLAGS)
    def derivative_row(
        rows: Any, columns_t: Any, i: int, scale: Any, kernel_row: Any, g_row: Any, q: Any, out: Any
    ) -> Any:
        """``out = q·f'(u, f)`` of row ``i`` (``f = kernel_row / q``); ``Σ_j g_j f_j``."""
        _squared_distances(rows, columns_t, i, scale, out)
        inverse = out.dtype.type(1) / q
        charge_sum = out.dtype.type(0)
        for j in range(out.shape[0]):
            value = kernel_row[j] * inverse
            out[j] = q * f_prime(out[j], value)
            charge_sum += g_row[j] * value
        return charge_sum

    @njit(**_FLAGS)
    def backward_rows(
        rows: Any,
        columns_t: Any,
        kernel: Any,
        grad_weight: Any,
        scale: Any,
        c: Any,
        charges: Any,
        grad_rows: Any,
        charge_sums: Any,
        sums: Any,
        scratch: Any,
        start: int,
        stop: int,
    ) -> None:
        P = columns_t.shape[0]
        zero = kernel.dtype.type(0)
        one = kernel.dtype.type(1)
        sums[:] = zero
        scratch[2] = zero
        no_sums = charge_sums[:0]
        step = 2 if P == PADDED_DIMENSIONS else 1
        for i in range(start, stop, step):
            q = charges[i] if charges.shape[0] > 0 else one
            part = derivative_row(
                rows, columns_t, i, scale, kernel[i], grad_weight[i], q, scratch[0]
            )
            if charge_sums.shape[0] > 0:
                charge_sums[i] = part
            if step == 1:
                _accumulate_row(
                    scratch[0],
                    grad_weight[i],
                    i,
                    rows,
                    columns_t,
                    c,
                    grad_rows,
                    no_sums,
                    sums,
                    scratch[1],
                )
                continue
            second = i + 1 < stop
            k = i + 1 if second else i
            g_b = scratch[2]
            if second:
                q = charges[k] if charges.shape[0] > 0 else one
                part = derivative_row(
                    rows, columns_t, k, scale, kernel[k], grad_weight[k], q, scratch[1]
                )
                if charge_sums.shape[0] > 0:
                    charge_sums[k] = part
                g_b = grad_weight[k]
            _accumulate_pair(
                scratch[0],
                grad_weight[i],
                scratch[1],
                g_b,
                i,
                k,
                second,
                rows,
                columns_t,
                c,
                grad_rows,
                no_sums,
                sums,
            )

    # each driver once, compiled twice: for the calling thread (prange is range there) and,
    # at the first call with more than one thread, for threads
    def forward(rows: Any, columns_t: Any, scale: Any, charges: Any, out: Any, chunks: int) -> None:
        for chunk in prange(chunks):
            start, stop = _rows_of(chunk, chunks, rows.shape[0])
            forward_rows(rows, columns_t, scale, charges, out, start, stop)

    def backward(
        rows: Any,
        columns_t: Any,
        kernel: Any,
        grad_weight: Any,
        scale: Any,
        c: Any,
        charges: Any,
        D: int,
        chunks: int,
    ) -> Any:
        R = rows.shape[0]
        grad_rows, charge_sums, sums, scratch = _backward_buffers(
            rows, columns_t, kernel, charges, chunks, 3
        )
        for chunk in prange(chunks):
            start, stop = _rows_of(chunk, chunks, R)
            part, spare = sums[chunk], scratch[chunk]
            backward_rows(
                rows,
                columns_t,
                kernel,
                grad_weight,
                scale,
                c,
                charges,
                grad_rows,
                charge_sums,
                part,
                spare,
                start,
                stop,
            )
        return _backward_outputs(columns_t, sums, c, grad_rows, charge_sums, charges[:0], D)

    alone = njit(**_FLAGS)(forward), njit(**_FLAGS)(backward)

    @functools.cache
    def threads() -> tuple[Any, Any]:
        return njit(**_FLAGS, parallel=True)(forward), njit(**_FLAGS, parallel=True)(backward)

    def forward_loop(
        rows: Any, columns_t: Any, scale: Any, charges: Any, out: Any, chunks: int = 1
    ) -> None:
        (threads() if chunks > 1 else alone)[0](rows, columns_t, scale, charges, out, chunks)

    def backward_loop(
        rows: Any,
        columns_t: Any,
        kernel: Any,
        grad_weight: Any,
        scale: Any,
        c: Any,
        charges: Any,
        D: int,
        chunks: int = 1,
    ) -> Any:
        args = (rows, columns_t, kernel, grad_weight, scale, c, charges, D, chunks)
        return (threads() if chunks > 1 else alone)[1](*args)

    return SimpleNamespace(forward=forward_loop, backward=backward_loop)


@_jit_threads
def _threads_start(out: Any) -> None:
    for chunk in prange(out.shape[0]):
        out[chunk] = chunk


def start_threads() -> str:
    """Start Numba's threads (its threading layer) and name the layer that runs them."""
    import numba

    _threads_start(np.zeros(2, dtype=np.int64))
    return numba.threading_layer()
