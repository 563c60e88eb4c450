"""particlesim.kernels.numba_cpu: the fused loops' rows shared out between threads, and when
they run in the calling thread alone."""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from particlesim.kernels import numba_cpu

pytestmark = pytest.mark.skipif(not numba_cpu.available(), reason="Numba is not installed")


def positions(rows: int, columns: int, D: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(rows [R, P], columns transposed [P, C])`` as the loops take them, float32."""
    rng = np.random.default_rng(seed)
    target = (rng.standard_normal((rows, D)) * 1.5).astype(np.float32)
    source = (rng.standard_normal((columns, D)) * 1.5).astype(np.float32)
    rows_copy, columns_t, finite, _ = numba_cpu.loops().prepare(
        target, source, np.empty(0, np.float32)
    )
    assert finite
    return rows_copy, columns_t


def _cauchy(u: float) -> float:
    return 1.0 / (1.0 + u)


def _cauchy_derivative(u: float, value: float) -> float:
    return -value * value


@pytest.mark.parametrize("D", [3, 8])
@pytest.mark.parametrize("chunks", [2, 3])
def test_rows_shared_between_threads_give_the_calling_thread_s_results(D: int, chunks: int) -> None:
    """Every loop, its rows shared out between 2 or 3 threads (an odd count of rows, so that
    the shares differ and the backward pairs its last row with zeros), gives what it gives
    in the calling thread: the same numbers for the row-wise loops, and the column sums (each
    share's, then added) to float32 rounding."""
    loops = numba_cpu.loops()
    rows, columns_t = positions(37, 29, D)
    charges = np.random.default_rng(1).standard_normal(37).astype(np.float32)
    scale = np.float32(0.3)
    for name, args in (
        ("gaussian", (rows, columns_t, -scale, charges)),
        ("distances", (rows, columns_t, scale)),
    ):
        alone, shared = np.empty((37, 29), np.float32), np.empty((37, 29), np.float32)
        getattr(loops, name)(*args, alone, 1)
        getattr(loops, name)(*args, shared, chunks)
        np.testing.assert_array_equal(shared, alone)
    cauchy = loops.profile_loops(_cauchy, _cauchy_derivative, True)
    alone, shared = np.empty((37, 29), np.float32), np.empty((37, 29), np.float32)
    cauchy.forward(rows, columns_t, scale, charges, alone, 1)
    cauchy.forward(rows, columns_t, scale, charges, shared, chunks)
    np.testing.assert_array_equal(shared, alone)
    rng = np.random.default_rng(2)
    derivative, grad_weight = (rng.standard_normal((37, 29)).astype(np.float32) for _ in "ab")
    charges = charges + np.float32(2.0) * np.sign(charges)  # (none near 0)
    for backward, kernel in (
        (functools.partial(loops.backward, rows, columns_t, derivative), None),
        (functools.partial(cauchy.backward, rows, columns_t, alone, grad_weight, scale), alone),
    ):
        results = []
        for count in (1, chunks):
            if kernel is None:
                results.append(backward(grad_weight, np.float32(2.0), charges, D, count))
            else:
                results.append(backward(np.float32(2.0), charges, D, count))
        for a, b, shape in zip(*results[::-1], [(37, D), (29, D), (37,)], strict=True):
            assert a.shape == b.shape == shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two PyTorch threads for the test (restored after), with Numba's threads started;
    skipped where no thread-safe Numba threading layer loads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if not numba_cpu._threads_ready():
            pytest.skip("no thread-safe Numba threading layer loads here")
        yield
    finally:
        torch.set_num_threads(threads)


def test_the_loops_take_as_many_threads_as_pytorch_from_a_size_on(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    """A loop shares its rows between ``torch.get_num_threads()`` threads (at most Numba's
    ``NUMBA_NUM_THREADS``) from ``THREADED_MIN_PAIRS`` pairs on; below, with one PyTorch
    thread, or with ``THREADED`` off, it runs in the calling thread alone."""
    import numba

    assert numba.threading_layer() in ("omp", "tbb")
    want = min(2, numba.config.NUMBA_NUM_THREADS)
    assert numba_cpu.threads(numba_cpu.THREADED_MIN_PAIRS) == want
    assert numba_cpu.threads(numba_cpu.THREADED_MIN_PAIRS - 1) == 1
    monkeypatch.setattr(numba_cpu, "THREADED", False)
    assert numba_cpu.threads(10**9) == 1
    monkeypatch.setattr(numba_cpu, "THREADED", True)
    torch.set_num_threads(1)
    assert numba_cpu.threads(10**9) == 1


def _forked_child(pipe: Any) -> None:
    """Run the Gaussian loop with the thread count :func:`numba_cpu.threads` gives here."""
    try:
        count = numba_cpu.threads(10**9)
        rows, columns_t = positions(37, 29, 3)
        out = np.empty((37, 29), np.float32)
        numba_cpu.loops().gaussian(rows, columns_t, np.float32(-1.0), out[:0, 0], out, count)
        pipe.send((count, float(out.sum())))
    finally:
        os._exit(0)


def test_a_child_forked_after_the_threads_started_runs_the_loops_alone(two_threads: None) -> None:
    """GNU OpenMP cannot run in a child forked from a process that used it (Numba's layer
    ends such a child): a forked child runs the loops in its calling thread, and gets the
    same numbers."""
    rows, columns_t = positions(37, 29, 3)
    out = np.empty((37, 29), np.float32)
    numba_cpu.loops().gaussian(rows, columns_t, np.float32(-1.0), out[:0, 0], out, 2)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_forked_child, args=(send,))
    child.start()
    assert receive.poll(30), "the forked child sent nothing"
    count, total = receive.recv()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert count == 1
    assert total == pytest.approx(float(out.sum()), rel=1e-6)
