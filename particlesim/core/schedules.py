"""Schedules: scalars (step size, temperature) as pure functions of the absolute step.

A ``float`` where a schedule is expected means :class:`Constant`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from particlesim.errors import OptionError


class Schedule:
    """Base class: ``schedule(step) -> float``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError  # pragma: no cover

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Constant(Schedule):
    """``value`` at every step."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Ramp(Schedule):
    """Linear from ``start`` at step 0 to ``stop`` at ``steps``, then constant."""

    def __init__(self, start: float, stop: float, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"Ramp: steps must be >= 1, got {steps}")
        self.start, self.stop, self.steps = float(start), float(stop), int(steps)

    def __call__(self, step: int) -> float:
        t = min(max(step / self.steps, 0.0), 1.0)
        return self.start + (self.stop - self.start) * t

    def __repr__(self) -> str:
        return f"Ramp({self.start}, {self.stop}, steps={self.steps})"


class Cosine(Schedule):
    """Half-cosine from ``start`` at step 0 down to ``stop`` at ``steps``, then constant."""

    def __init__(self, start: float, stop: float, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"Cosine: steps must be >= 1, got {steps}")
        self.start, self.stop, self.steps = float(start), float(stop), int(steps)

    def __call__(self, step: int) -> float:
        t = min(max(step / self.steps, 0.0), 1.0)
        return self.stop + 0.5 * (self.start - self.stop) * (1 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return f"Cosine({self.start}, {self.stop}, steps={self.steps})"


def as_schedule(value: Schedule | float) -> Schedule:
    """``float``/``int`` → :class:`Constant`; schedules pass through."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Constant(value)
    raise TypeError(f"expected a number or a Schedule, got {value!r}")


def step_entries(
    entries: Sequence[Sequence[float]], key: str, what: str
) -> list[tuple[int, float]]:
    """``[[step, value], …]`` checked and sorted by step: a piecewise-constant schedule
    (from each step on, ``value``), as scenarios write a potential's ``coefficient_schedule``
    or a move's ``temperature_schedule``. A bad entry is an :class:`OptionError` naming
    ``key[i]`` and ``what`` the value is (``"coefficient"``, ``"temperature"``)."""
    checked = []
    for i, entry in enumerate(entries):
        if (
            len(entry) != 2
            or not float(entry[0]).is_integer()
            or entry[0] < 0
            or not (math.isfinite(entry[1]) and entry[1] >= 0)
        ):
            raise OptionError(
                f"{key}[{i}]",
                f"expected [step >= 0 (an integer), {what} >= 0], got {list(entry)}",
            )
        checked.append((int(entry[0]), float(entry[1])))
    return sorted(checked)


def value_at(entries: Sequence[tuple[int, float]], step: int, before: float) -> float:
    """The value of :func:`step_entries` at ``step``: the last entry at or before it, or
    ``before`` ahead of the first."""
    value = before
    for start, scheduled in entries:
        if step >= start:
            value = scheduled
    return value
