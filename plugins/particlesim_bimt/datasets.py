"""BIMT's small data sets: the symbolic formulas of §3.1 and the two moons of §3.2.

* ``symbolic_formula``: inputs uniform in ``[-1, 1]^d``, real targets given by a formula
  (``symbolic_formulas_3.1.ipynb``, github KindXiaoming/BIMT): ``"independence"``
  ``(x1, x2, x3, x4) → ((x1 + x3)³, x2² + sin(π x4))``, ``"feature_sharing"``
  ``(x1, x2, x3) → (x1², x1² + x2², x1² + x2² + x3²)`` and ``"compositionality"``
  ``(x1, x2, x3, x4) → √((x1 − x2)² + (x3 − x4)²)``; 100 training and 100 test points as
  in the notebook. Scored by ``mse`` with ``scale = 1/outputs``: the mean over samples *and*
  outputs, the notebook's ``torch.mean((pred - labels)**2)``, so that its λ carries over.
* ``moons_sklearn``: the two moons as the authors' ``two_moon_3.2.ipynb`` draws them
  (``sklearn.datasets.make_moons(n_samples=200, noise=0.1)``: half of the points on the
  upper arc ``(cos t, sin t)``, half on the lower ``(1 − cos t, ½ − sin t)``, ``t`` evenly
  spaced in ``[0, π]``, shuffled, Gaussian noise added), with int64 class labels, so that a
  network with two outputs is trained by cross-entropy as in the notebook (``moons_2d`` of
  the milletari plugin gives 0/1 floats for one logit instead).

Both draw their points from ``data_seed`` alone (default 0), so that training seeds
compare initialisations on one data set; ``data_seed = -1`` follows the scenario's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from particlesim.data.datasets import DataSplits
from particlesim.errors import OptionError

__all__ = ["DATASETS", "FORMULAS", "MoonsSklearn", "SymbolicFormula", "formula_targets"]

#: formula name → (number of inputs, number of outputs)
FORMULAS: dict[str, tuple[int, int]] = {
    "independence": (4, 2),
    "feature_sharing": (3, 3),
    "compositionality": (4, 1),
}

#: formula name → output index → the input indices (0-based) it depends on
DEPENDENCIES: dict[str, dict[int, frozenset[int]]] = {
    "independence": {0: frozenset({0, 2}), 1: frozenset({1, 3})},
    "feature_sharing": {0: frozenset({0}), 1: frozenset({0, 1}), 2: frozenset({0, 1, 2})},
    "compositionality": {0: frozenset({0, 1, 2, 3})},
}


def formula_targets(formula: str, x: Tensor) -> Tensor:
    """The targets ``[n, outputs]`` of ``formula`` at the points ``x [n, inputs]``."""
    if formula == "independence":
        x1, x2, x3, x4 = x.unbind(1)
        return torch.stack([(x1 + x3) ** 3, x2**2 + torch.sin(math.pi * x4)], 1)
    if formula == "feature_sharing":
        x1, x2, x3 = x.unbind(1)
        return torch.stack([x1**2, x1**2 + x2**2, x1**2 + x2**2 + x3**2], 1)
    if formula == "compositionality":
        x1, x2, x3, x4 = x.unbind(1)
        return torch.sqrt((x1 - x2) ** 2 + (x3 - x4) ** 2)[:, None]
    raise OptionError("formula", f"must be one of {', '.join(FORMULAS)}, got {formula!r}")


def _check_counts(**counts: int) -> None:
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(key, f"must be an integer >= 1, got {value!r}")


def _check_seed(data_seed: int) -> None:
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < -1:
        raise OptionError("data_seed", f"must be an integer >= 0 (or -1), got {data_seed!r}")


class SymbolicFormula:
    """Regression on a symbolic formula of BIMT's §3.1 (see the module docstring).

    Args:
        formula: ``"independence"`` (default), ``"feature_sharing"`` or ``"compositionality"``.
        n_train: training points (the notebook: 100).
        n_test: test points (the notebook: 100).
        data_seed: seeds the points (``-1``: the scenario's seed).
    """

    name: ClassVar[str] = "symbolic_formula"
    online: ClassVar[bool] = False

    def __init__(
        self,
        *,
        formula: str = "independence",
        n_train: int = 100,
        n_test: int = 100,
        data_seed: int = 0,
    ) -> None:
        if formula not in FORMULAS:
            raise OptionError("formula", f"must be one of {', '.join(FORMULAS)}, got {formula!r}")
        _check_counts(n_train=n_train, n_test=n_test)
        _check_seed(data_seed)
        self.formula, self.n_train, self.n_test = formula, n_train, n_test
        self.data_seed = data_seed

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Draw the training points, then the test points, uniform in ``[-1, 1]^d``."""
        data_seed = seed if self.data_seed == -1 else self.data_seed
        generator = torch.Generator().manual_seed(int(data_seed))
        inputs, outputs = FORMULAS[self.formula]
        splits = []
        for count in (self.n_train, self.n_test):
            x = torch.rand(count, inputs, generator=generator, dtype=torch.float64) * 2 - 1
            splits.append((x.float(), formula_targets(self.formula, x).float()))
        (train_x, train_y), (test_x, test_y) = splits
        source = (
            f"{self.name} ({self.formula}: {self.n_train} train / {self.n_test} test points "
            f"uniform in [-1, 1]^{inputs}, data_seed {data_seed})"
        )
        log(f"data: {source}")
        return DataSplits(
            train_x=train_x,
            train_y=train_y,
            val_x=train_x[:0],
            val_y=train_y[:0],
            test_x=test_x,
            test_y=test_y,
            num_classes=outputs,
            input_shape=(inputs,),
            source=source,
            loss="mse",
            loss_options={"scale": 1.0 / outputs},
        )


def make_moons(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` points ``[n, 2]`` (float64) and labels ``[n]`` (int64) as sklearn's make_moons.

    ``n // 2`` points on the upper arc (class 0), the rest on the lower (class 1), each arc
    at evenly spaced angles; the rows shuffled, then noise of standard deviation ``noise``.
    """
    upper, lower = n // 2, n - n // 2
    t_up = torch.linspace(0, math.pi, upper, dtype=torch.float64)
    t_low = torch.linspace(0, math.pi, lower, dtype=torch.float64)
    points = torch.cat(
        [
            torch.stack([t_up.cos(), t_up.sin()], 1),
            torch.stack([1 - t_low.cos(), 0.5 - t_low.sin()], 1),
        ]
    )
    labels = torch.cat(
        [torch.zeros(upper, dtype=torch.int64), torch.ones(lower, dtype=torch.int64)]
    )
    order = torch.randperm(n, generator=generator)
    points, labels = points[order], labels[order]
    if noise > 0:
        points = points + noise * torch.randn(
            points.shape, generator=generator, dtype=torch.float64
        )
    return points, labels


class MoonsSklearn:
    """The two moons of BIMT's §3.2 with class labels (see the module docstring).

    Args:
        n_train: training points (the notebook: 200).
        n_test: test points (the notebook: 200).
        noise: standard deviation of the Gaussian noise (the notebook: 0.1).
        data_seed: seeds the points (``-1``: the scenario's seed).
    """

    name: ClassVar[str] = "moons_sklearn"
    online: ClassVar[bool] = False

    def __init__(
        self, *, n_train: int = 200, n_test: int = 200, noise: float = 0.1, data_seed: int = 0
    ) -> None:
        _check_counts(n_train=n_train, n_test=n_test)
        if not (math.isfinite(noise) and noise >= 0):
            raise OptionError("noise", f"must be a finite number >= 0, got {noise}")
        _check_seed(data_seed)
        self.n_train, self.n_test, self.noise = n_train, n_test, float(noise)
        self.data_seed = data_seed

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Draw the training set, then the test set (two make_moons draws)."""
        data_seed = seed if self.data_seed == -1 else self.data_seed
        generator = torch.Generator().manual_seed(int(data_seed))
        train_x, train_y = make_moons(self.n_train, self.noise, generator)
        test_x, test_y = make_moons(self.n_test, self.noise, generator)
        source = (
            f"{self.name} (synthetic: {self.n_train} train / {self.n_test} test points, "
            f"noise {self.noise:g}, data_seed {data_seed})"
        )
        log(f"data: {source}")
        return DataSplits(
            train_x=train_x.float(),
            train_y=train_y,
            val_x=train_x[:0].float(),
            val_y=train_y[:0],
            test_x=test_x.float(),
            test_y=test_y,
            num_classes=2,
            input_shape=(2,),
            source=source,
            loss="cross_entropy",
        )


DATASETS = (SymbolicFormula, MoonsSklearn)
