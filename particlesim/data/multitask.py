"""Multi-task data: two (or more) registered classification data sets as one, with one head each.

Composing registered data sets into one multi-head task is a generic mechanism any
model can train on (any registered classification sets, any network with a
``multi_head_cross_entropy`` head per task), so it stays in the engine; Wołczyk et al.
("Biologically-Inspired Spatial Neural Networks": MNIST and Fashion-MNIST) is one user.
A network that must solve several classification tasks at once sees its inputs in one
of three ways (``mode``):

* ``"concatenate"``: one example of each task side by side, ``x = [x_1, x_2]``
  (1568 inputs for two 28×28 sets); every example carries a label for every head;
* ``"mix"``: one example of each task added element-wise, ``x = x_1 + x_2``
  (784 inputs); again every head is labelled;
* ``"sequential"``: one example from either task, ``x = x_t``; only head ``t`` is
  labelled, the other heads' targets are ``-1`` ("no label").

Targets are ``[n, H]`` class indices, one column per task, and the data set asks
for the loss ``multi_head_cross_entropy`` with ``heads = [K_1, K_2, …]`` (the
tasks' class counts, ``num_classes = Σ K_t`` network outputs): head ``t`` owns
outputs ``Σ_{s<t} K_s … Σ_{s≤t} K_s - 1``.

Each task is any registered data set, resolved with its own options
(``data_dir``, ``train_fraction``, …) through the data-set registry of the scenario
being built: the scenario builder passes its ``registries`` (the plugins that
scenario loaded, so ``-p no:NAME`` and ``PARTICLESIM_PLUGINS`` hold for the tasks
too). Constructed directly without ``registries``, a task may be one of the
engine's own data sets only (``mnist``, ``fashion_mnist``, ``idx``). A task's files
are found offline first and verified like any other. In ``concatenate`` and ``mix``
modes examples are paired by a seeded permutation of each task (``pair_seed``;
with ``pairing = "fixed"`` the pairing holds for the whole run), ``min(n_1, n_2, …)``
pairs per split; in ``sequential`` mode the tasks' examples are pooled and shuffled by
the same seed, so that any prefix (``limit_test``) holds both tasks.

A fixed pairing lets a network read one task's label off the *other* task's input (each
MNIST image of the training set always comes with the same Fashion-MNIST image), a
shortcut that couples the heads. ``pairing = "fresh"`` draws every training batch anew:
each example of a batch is an independent uniform draw from each task's training set
(with replacement, from the run's data generator, so a resumed run draws the same
batches), the limit of re-pairing the tasks as often as possible; Wołczyk et al.'s code
re-pairs once per epoch (two shuffled loaders zipped). Validation and test pairs stay
fixed, so every run is scored on the same pairs.

Example (scenario):

.. code-block:: toml

    [data]
    name = "multitask"
    mode = "concatenate"
    tasks = [{ name = "mnist" }, { name = "fashion_mnist", data_dir = "/data/fashion-mnist" }]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from particlesim.core.seeds import derived_seed
from particlesim.data.datasets import BUILTIN_DATASETS, DataSplits, fraction_subset
from particlesim.errors import DataError, OptionError, RegistryError, ScenarioError, close_matches

Mode = Literal["concatenate", "mix", "sequential"]
MODES: tuple[str, ...] = ("concatenate", "mix", "sequential")
Pairing = Literal["fixed", "fresh"]
PAIRINGS: tuple[str, ...] = ("fixed", "fresh")
#: The paper's pair of tasks.
DEFAULT_TASKS: tuple[str, ...] = ("mnist", "fashion_mnist")
#: Target of a head that has no label for an example (read by ``multi_head_cross_entropy``).
NO_LABEL = -1


def _task_factory(name: str, registries: Mapping[str, Any] | None) -> Any:
    """The factory of data set ``name``: from ``registries["dataset"]``, else the engine's own.

    Raises:
        RegistryError: an unknown name (one line, with close matches and the known names).
    """
    if registries is not None:
        return registries["dataset"].get(name)
    own = {cls.name: cls for cls in BUILTIN_DATASETS}
    if name in own:
        return own[name]
    raise RegistryError(
        f"unknown dataset {name!r}{close_matches(str(name), own)}; known: "
        f"{', '.join(sorted(own))} (the engine's own; pass registries= for a plugin's)"
    )


def _task_table(task: str | Mapping[str, Any], index: int) -> dict[str, Any]:
    if isinstance(task, str):
        return {"name": task}
    if not isinstance(task, Mapping):
        raise OptionError(f"tasks[{index}]", f"expected a data set name or a table, got {task!r}")
    table = dict(task)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise OptionError(f"tasks[{index}].name", "missing: each task names a registered data set")
    return table


class MultiTask:
    """Several registered classification data sets composed into one multi-head task.

    Args:
        mode: ``"concatenate"``, ``"mix"`` or ``"sequential"`` (see the module docstring).
        tasks: the task data sets, each a registered name or a table ``{name = …,
            <its options>}``; default ``["mnist", "fashion_mnist"]``. At least two.
        pair_seed: seeds the pairing (and the pooled order of ``sequential``); the
            same for every run by default, so every seed is tested on the same pairs;
            ``-1`` follows the scenario's seed.
        pairing: ``"fixed"`` (one pairing for the whole run) or ``"fresh"`` (every
            training batch paired anew; ``concatenate`` and ``mix`` only; see the module
            docstring).
        train_fraction: keep a seeded random subset of this fraction of the composed
            training examples (0 < f ≤ 1; drawn with the scenario's seed).
        limit_test: keep only the first ``k`` composed test examples (``None``: all).
        registries: the registries the tasks are looked up in (``registries["dataset"]``);
            the scenario builder passes the scenario's own, never a scenario key. ``None``:
            the engine's own data sets only.
    """

    name: ClassVar[str] = "multitask"
    #: Composed from fixed data sets only (see ``_check_task``).
    online: ClassVar[bool] = False

    def __init__(
        self,
        *,
        mode: Mode = "concatenate",
        tasks: list[str | dict[str, Any]] | None = None,
        pair_seed: int = 0,
        pairing: Pairing = "fixed",
        train_fraction: float = 1.0,
        limit_test: int | None = None,
        registries: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise OptionError("mode", f"must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if isinstance(pair_seed, bool) or not isinstance(pair_seed, int) or pair_seed < -1:
            raise OptionError("pair_seed", f"must be an integer >= 0 (or -1), got {pair_seed!r}")
        if pairing not in PAIRINGS:
            raise OptionError(
                "pairing", f"must be one of {', '.join(map(repr, PAIRINGS))}, got {pairing!r}"
            )
        if pairing == "fresh" and mode == "sequential":
            raise OptionError(
                "pairing",
                "'fresh' pairs examples of the tasks anew, and mode 'sequential' pairs none; "
                "use mode 'concatenate' or 'mix', or pairing 'fixed'",
            )
        if not 0.0 < train_fraction <= 1.0:
            raise OptionError("train_fraction", f"must be in (0, 1], got {train_fraction}")
        if limit_test is not None and (isinstance(limit_test, bool) or limit_test < 1):
            raise OptionError(
                "limit_test", f"must be a positive integer or nothing, got {limit_test!r}"
            )
        tables = [_task_table(t, i) for i, t in enumerate(tasks or list(DEFAULT_TASKS))]
        if len(tables) < 2:
            raise OptionError("tasks", f"needs at least two data sets, got {len(tables)}")
        self.mode = mode
        self.pair_seed = pair_seed
        self.pairing = pairing
        self.train_fraction = float(train_fraction)
        self.limit_test = limit_test
        self.task_names = [t["name"] for t in tables]
        self.tasks = [self._make_task(table, i, registries) for i, table in enumerate(tables)]

    @staticmethod
    def _make_task(table: dict[str, Any], index: int, registries: Mapping[str, Any] | None) -> Any:
        """Construct task ``index`` from the registries, errors keyed ``tasks[i].<key>``."""
        from particlesim.core.signatures import parameter_names
        from particlesim.scenario.options import check_options

        options = dict(table)
        name = options.pop("name")
        if name == MultiTask.name:
            raise OptionError(f"tasks[{index}].name", "a task cannot itself be a multitask set")
        try:
            factory = _task_factory(name, registries)
        except RegistryError as exc:
            raise OptionError(f"tasks[{index}].name", str(exc)) from None
        # a task that looks data sets up itself gets the same registries, never from its table
        offered = {"registries": registries} if "registries" in parameter_names(factory) else {}
        try:
            options = check_options(
                factory,
                options,
                f"tasks[{index}]",
                exclude=tuple(offered),
                what=f"data set {name!r}",
            )
        except ScenarioError as exc:
            raise OptionError(exc.path, exc.detail) from None
        try:
            return factory(**options, **offered)
        except OptionError as exc:
            raise OptionError(f"tasks[{index}].{exc.key}", exc.detail) from None

    # ---------------------------------------------------------------- loading

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Load every task (each says where its files came from) and compose the splits."""
        parts = [task.load(seed=seed, log=log) for task in self.tasks]
        for name, part in zip(self.task_names, parts, strict=True):
            self._check_task(name, part)
        if self.mode in ("mix", "sequential"):
            first = parts[0].train_x.shape[1]
            for name, part in zip(self.task_names[1:], parts[1:], strict=True):
                if part.train_x.shape[1] != first:
                    raise DataError(
                        f"multitask mode {self.mode!r} needs tasks with the same number of "
                        f"inputs: {self.task_names[0]!r} has {first}, {name!r} has "
                        f"{part.train_x.shape[1]}; use mode 'concatenate'"
                    )
        pair_seed = seed if self.pair_seed == -1 else self.pair_seed
        composed = {}
        for offset, split in enumerate(("train", "val", "test")):
            xs = [getattr(p, f"{split}_x") for p in parts]
            ys = [getattr(p, f"{split}_y") for p in parts]
            generator = torch.Generator().manual_seed(derived_seed(pair_seed, 3, offset))
            composed[split] = self.compose(xs, ys, generator)
        train_x, train_y = composed["train"]
        keep = fraction_subset(
            train_x.shape[0], self.train_fraction, torch.Generator().manual_seed(int(seed))
        )
        if keep is not None:
            train_x, train_y = train_x[keep], train_y[keep]
        sampler = None
        if self.pairing == "fresh":
            sampler = FreshPairs(
                self, [p.train_x for p in parts], [p.train_y for p in parts], seed=seed
            )
        test_x, test_y = composed["test"]
        if self.limit_test is not None:
            test_x, test_y = test_x[: self.limit_test], test_y[: self.limit_test]
        heads = [int(p.num_classes) for p in parts]
        if self.mode == "concatenate":
            input_shape: tuple[int, ...] = (int(train_x.shape[1]),)
        else:
            input_shape = tuple(parts[0].input_shape)
        source = f"multitask {self.mode} of " + " + ".join(
            f"{name} ({part.source})" for name, part in zip(self.task_names, parts, strict=True)
        )
        fresh = ", every training batch paired anew" if sampler is not None else ""
        log(
            f"data: multitask {self.mode}: {train_x.shape[0]} training, {test_x.shape[0]} test "
            f"examples of {input_shape} inputs, heads {heads} ({', '.join(self.task_names)})"
            f"{fresh}"
        )
        val_x, val_y = composed["val"]
        return DataSplits(
            train_x=train_x.contiguous(),
            train_y=train_y.contiguous(),
            val_x=val_x.contiguous(),
            val_y=val_y.contiguous(),
            test_x=test_x.contiguous(),
            test_y=test_y.contiguous(),
            num_classes=sum(heads),
            input_shape=input_shape,
            source=source,
            loss="multi_head_cross_entropy",
            loss_options={"heads": heads},
            sampler=sampler,
        )

    @staticmethod
    def _check_task(name: str, part: DataSplits) -> None:
        if part.sampler is not None:
            raise DataError(
                f"multitask: task {name!r} draws fresh batches online; only fixed data sets "
                "can be composed"
            )
        for split in ("train", "val", "test"):
            y = getattr(part, f"{split}_y")
            if y.ndim != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise DataError(
                    f"multitask: task {name!r} must give class indices [n] as targets, its "
                    f"{split} targets are {y.dtype} of shape {list(y.shape)}"
                )
        if part.loss != "cross_entropy":
            raise DataError(
                f"multitask: task {name!r} is scored by {part.loss!r}; only classification "
                "tasks (cross_entropy) can be composed"
            )

    def combine(self, chosen: Sequence[Tensor]) -> Tensor:
        """Paired inputs (one ``[n, F_t]`` per task, row ``i`` of each a pair) as one input."""
        if self.mode == "concatenate":
            return torch.cat(list(chosen), dim=1)
        return torch.stack(list(chosen)).sum(0) if chosen[0].shape[0] else chosen[0]

    def compose(
        self, xs: Sequence[Tensor], ys: Sequence[Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """One split of every task → ``(x [n, F], y [n, H])`` in this data set's mode.

        Args:
            xs: each task's inputs ``[n_t, F_t]``.
            ys: each task's class indices ``[n_t]``.
            generator: draws the pairing (or the pooled order).
        """
        heads = len(xs)
        if self.mode == "sequential":
            total = sum(int(x.shape[0]) for x in xs)
            features = int(xs[0].shape[1])
            x = torch.cat([x.reshape(-1, features) for x in xs]) if total else xs[0][:0]
            y = torch.full((total, heads), NO_LABEL, dtype=torch.int64)
            start = 0
            for t, labels in enumerate(ys):
                y[start : start + labels.shape[0], t] = labels.to(torch.int64)
                start += labels.shape[0]
            order = torch.randperm(total, generator=generator)
            return x[order], y[order]
        n = min(int(x.shape[0]) for x in xs)
        picks = [torch.randperm(int(x.shape[0]), generator=generator)[:n] for x in xs]
        chosen = [x[p] for x, p in zip(xs, picks, strict=True)]
        y = torch.stack([labels[p].to(torch.int64) for labels, p in zip(ys, picks, strict=True)], 1)
        return self.combine(chosen), y.reshape(n, heads)


class FreshPairs:
    """The training sampler of ``pairing = "fresh"``: each batch row pairs an independent
    uniform draw from every task's training set (``train_fraction`` of each task kept,
    drawn with the scenario's seed), combined in the data set's mode."""

    def __init__(
        self, data: MultiTask, xs: Sequence[Tensor], ys: Sequence[Tensor], *, seed: int
    ) -> None:
        self.data = data
        self.xs, self.ys = [], []
        for t, (x, y) in enumerate(zip(xs, ys, strict=True)):
            generator = torch.Generator().manual_seed(derived_seed(int(seed), 5, t))
            keep = fraction_subset(int(x.shape[0]), data.train_fraction, generator)
            if keep is not None:
                x, y = x[keep], y[keep]
            self.xs.append(x)
            self.ys.append(y.to(torch.int64))

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        picks = [
            torch.randint(int(x.shape[0]), (batch_size,), generator=generator) for x in self.xs
        ]
        x = self.data.combine([x[p] for x, p in zip(self.xs, picks, strict=True)])
        y = torch.stack([labels[p] for labels, p in zip(self.ys, picks, strict=True)], 1)
        return x, y


def task_labels(targets: Tensor, task: int) -> tuple[Tensor, Tensor]:
    """``(rows, labels)`` of the examples labelled for head ``task`` in ``targets [n, H]``."""
    column = targets.reshape(targets.shape[0], -1)[:, task]
    rows = (column >= 0).nonzero().flatten()
    return rows, column[rows]


__all__ = [
    "DEFAULT_TASKS",
    "MODES",
    "NO_LABEL",
    "PAIRINGS",
    "FreshPairs",
    "MultiTask",
    "task_labels",
]
