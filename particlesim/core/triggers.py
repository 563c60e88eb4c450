"""Triggers: pure functions of the absolute step that say when something is due.

``Periodic(100)`` in a run of 500 steps fires at 100, 200, …, 500, and after a
resume at step 1234 its next firing is 1300 (anchored to the absolute step, not
to the start of the run). An ``int`` where a trigger is expected means
``Periodic(int)``.
"""

from __future__ import annotations

from collections.abc import Iterable


class Trigger:
    """Base class: ``trigger(step) -> bool``. Subclasses implement :meth:`compute`."""

    def compute(self, step: int) -> bool:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, step: int) -> bool:
        return self.compute(step)

    def __and__(self, other: Trigger) -> Trigger:
        return And([self, other])

    def __or__(self, other: Trigger) -> Trigger:
        return Or([self, other])

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


class Periodic(Trigger):
    """Fires when ``(step - phase) % period == 0`` and ``step > phase``… or at ``step == phase``.

    Exactly: ``step >= phase and (step - phase) % period == 0``.
    """

    def __init__(self, period: int, phase: int = 0) -> None:
        if period < 1:
            raise ValueError(f"Periodic: period must be >= 1, got {period}")
        self.period = int(period)
        self.phase = int(phase)

    def compute(self, step: int) -> bool:
        return step >= self.phase and (step - self.phase) % self.period == 0

    def __repr__(self) -> str:
        return f"Periodic(period={self.period}, phase={self.phase})"


class At(Trigger):
    """Fires at the listed steps only."""

    def __init__(self, steps: Iterable[int]) -> None:
        self.steps = frozenset(int(s) for s in steps)

    def compute(self, step: int) -> bool:
        return step in self.steps

    def __repr__(self) -> str:
        return f"At({sorted(self.steps)})"


class OnEpoch(Trigger):
    """Fires at the last step of every ``every``-th epoch: ``step % (every·steps_per_epoch) == 0``.

    ``steps_per_epoch`` is filled in by the simulation when it attaches the trigger.
    """

    def __init__(self, every: int = 1, steps_per_epoch: int | None = None) -> None:
        if every < 1:
            raise ValueError(f"OnEpoch: every must be >= 1, got {every}")
        self.every = int(every)
        self.steps_per_epoch = steps_per_epoch

    def bind(self, steps_per_epoch: int) -> OnEpoch:
        """A copy that knows the epoch length."""
        return OnEpoch(self.every, steps_per_epoch)

    def compute(self, step: int) -> bool:
        if self.steps_per_epoch is None:
            raise RuntimeError("OnEpoch trigger used before the simulation bound steps_per_epoch")
        return step > 0 and step % (self.every * self.steps_per_epoch) == 0

    def __repr__(self) -> str:
        return f"OnEpoch(every={self.every}, steps_per_epoch={self.steps_per_epoch})"


class And(Trigger):
    """Fires when all of its triggers fire."""

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.triggers = tuple(triggers)

    def compute(self, step: int) -> bool:
        return all(t(step) for t in self.triggers)

    def __repr__(self) -> str:
        return f"And({list(self.triggers)})"


class Or(Trigger):
    """Fires when any of its triggers fires."""

    def __init__(self, triggers: Iterable[Trigger]) -> None:
        self.triggers = tuple(triggers)

    def compute(self, step: int) -> bool:
        return any(t(step) for t in self.triggers)

    def __repr__(self) -> str:
        return f"Or({list(self.triggers)})"


#: How a period is written everywhere (scenarios, writers' options, the CLI): a step count or
#: ``"epoch"``; where "never" is allowed, also ``0`` or ``false``.
PERIOD_WORDS = 'a positive integer (steps) or "epoch"'


def parse_period(value: object, key: str, *, allow_off: bool = False) -> Trigger | None:
    """The one parser of periods (``every``, ``checkpoint_every``, ``connectivity_every``…).

    ``"epoch"`` → :class:`OnEpoch`; an integer ``n ≥ 1`` → :class:`Periodic` ``(n)``; a
    :class:`Trigger` passes through; with ``allow_off``, ``0``, ``false`` and ``None`` mean
    never (``None`` is returned).

    Raises:
        OptionError: anything else, naming ``key`` and what is accepted.
    """
    from particlesim.errors import OptionError

    if isinstance(value, Trigger):
        return value
    if value == "epoch":
        return OnEpoch()
    if allow_off and (value is None or value is False or (type(value) is int and value == 0)):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return Periodic(value)
    accepted = PERIOD_WORDS + (", or 0 / false for never" if allow_off else "")
    raise OptionError(key, f"expected {accepted}, got {value!r}")


def as_trigger(value: Trigger | int | str) -> Trigger:
    """``int`` → :class:`Periodic`, ``"epoch"`` → :class:`OnEpoch`; triggers pass through."""
    from particlesim.errors import OptionError

    try:
        trigger = parse_period(value, "trigger")
    except OptionError as exc:
        raise TypeError(f"expected a Trigger, an int period or 'epoch', got {value!r}") from exc
    assert trigger is not None
    return trigger


def bind_epoch(trigger: Trigger, steps_per_epoch: int) -> Trigger:
    """Give every :class:`OnEpoch` inside ``trigger`` the epoch length."""
    if isinstance(trigger, OnEpoch):
        return trigger.bind(steps_per_epoch)
    if isinstance(trigger, And | Or):
        return type(trigger)(bind_epoch(t, steps_per_epoch) for t in trigger.triggers)
    return trigger
