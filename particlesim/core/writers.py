"""Writer contract: writers are reporters that say what they need and when.

The simulation asks each writer :meth:`Writer.describe_next` for a
:class:`Request` (steps until due, which observables); at a due step it
computes the union of requested observables once and hands the same values to
every due writer's :meth:`Writer.report`.

**Resume.** A writer that keeps a file says how far it got in
:meth:`Writer.state_dict` (frames, lines); a checkpoint stores that, and a
resumed run calls :meth:`Writer.resume` instead of :meth:`Writer.open`: the
writer reopens its file, drops whatever was written after the checkpoint and
appends from there, so the continued file equals the one an uninterrupted run
would have written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from particlesim.core.triggers import OnEpoch, Trigger, as_trigger

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation


@dataclass(frozen=True)
class Request:
    """What a writer needs for its next frame."""

    steps: int  # steps from now until due, > 0 (or 0: due now)
    observables: tuple[str, ...] = ()


class Writer:
    """Base class of writers. Subclasses set ``name`` and implement :meth:`report`.

    Args:
        trigger: when to write (an ``int`` means every that many steps); the
            default writes at the end of every epoch.
        observables: names of the observables to record.
    """

    name: ClassVar[str] = ""
    default_observables: ClassVar[tuple[str, ...]] = ()
    #: Writers report in ascending ``order`` (stable): a checkpoint writer (order 100)
    #: reports after every file writer, so the frame counts it saves include this step.
    order: ClassVar[int] = 0

    def __init__(
        self, *, trigger: Trigger | int | None = None, observables: list[str] | None = None
    ) -> None:
        self.trigger = OnEpoch() if trigger is None else as_trigger(trigger)
        self.observables = tuple(observables or self.default_observables)
        #: No list given: the simulation adds the system's own observables (each potential's
        #: energy, each learned width) to a non-empty default list.
        self.observables_defaulted = observables is None

    def include_defaults(self, names: tuple[str, ...]) -> None:
        """Also record ``names`` (the system's own observables) if no list was given.

        Called by the simulation before the run; a writer given ``observables`` records
        exactly those, and one with no default list (a checkpoint) records none.
        """
        if self.observables_defaulted and self.observables:
            self.observables = (*self.observables, *(n for n in names if n not in self.observables))

    def open(self, simulation: Simulation, out_dir: Path | None) -> None:
        """Called once before the first step (lazy initialisation goes here)."""

    def is_due(self, step: int) -> bool:
        return self.trigger(step)

    def wants(self, step: int) -> tuple[str, ...] | None:
        """``None`` when not due at ``step``; else the observables to compute for this frame.

        A writer with several element periods (particles every 100 steps,
        observables every epoch) overrides this to ask for observables only
        at the steps it records them.
        """
        return self.observables if self.trigger(step) else None

    def describe_next(self, simulation: Simulation) -> Request:
        """Steps until this writer is next due (scanning ahead), and what it needs."""
        step = simulation.step
        for ahead in range(0, simulation.total_steps - step + 1):
            if self.trigger(step + ahead):
                return Request(ahead, self.observables)
        return Request(simulation.total_steps - step + 1, self.observables)

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover

    def flush(self) -> None:
        """Push buffered output to disk."""

    def state_dict(self) -> dict[str, Any]:
        """How far this writer got (plain values: frame or line counts); ``{}`` by default."""
        return {}

    def resume(self, simulation: Simulation, out_dir: Path | None, state: dict[str, Any]) -> None:
        """Continue a checkpointed run: reopen, trim to ``state``, append from there.

        The default (writers without files) just calls :meth:`open`.
        """
        self.open(simulation, out_dir)

    def close(self, status: str) -> None:
        """Called once when the run ends (``completed``, ``interrupted`` or ``failed``)."""


class MemoryWriter(Writer):
    """Keeps every frame in ``self.rows`` (a list of dicts); for notebooks and tests."""

    name = "memory"
    default_observables = ("epoch", "train_loss", "train_accuracy", "test_accuracy")

    def __init__(
        self, *, trigger: Trigger | int | None = None, observables: list[str] | None = None
    ) -> None:
        super().__init__(trigger=trigger, observables=observables)
        self.rows: list[dict[str, Any]] = []

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        self.rows.append({"step": step, **values})
