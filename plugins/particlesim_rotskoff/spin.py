"""The spherical 3-spin function: Rotskoff & Vanden-Eijnden's target for mean-field networks.

.. math:: f(x) = \\frac{1}{d} \\sum_{p,q,r=1}^{d} a_{pqr}\\, x_p x_q x_r,
          \\qquad x \\in S^{d-1}(\\sqrt{d}),\\quad a_{pqr} \\sim N(0, 1)

("A test case: Spherical 3-spin model" slide; d = 25 in the paper). The number of its
critical points grows exponentially with ``d``; the paper uses it as a hard function to
represent, not as a loss. Points are drawn uniformly on the sphere of radius ``√d``
(``x = √d·g/|g|`` with ``g ~ N(0, I)``).

Two facts the tests check:

* ``f`` depends on ``a`` only through its symmetrisation ``S = sym(a)`` and is odd,
  ``f(-x) = -f(x)``, so its mean over the sphere is 0;
* its variance over the sphere has the closed form (:func:`sphere_variance`)
  ``Var f = (6|S|² + 9|v|²) / ((d+2)(d+4))`` with ``v_p = Σ_q S_pqq`` (Wick's theorem for
  the sixth moments of a uniform point on the sphere, ``E[x^{⊗6}] = d³ E[g^{⊗6}] /
  (d(d+2)(d+4))``), whose mean over the coefficients is exactly ``d``
  (``E_a f(x)² = |x|⁶/d² = d`` at every point).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from particlesim.data.datasets import DataSplits
from particlesim.errors import OptionError


def sphere_points(count: int, dim: int, generator: torch.Generator) -> Tensor:
    """``count`` points uniform on ``S^{dim-1}(√dim)``, ``[count, dim]`` float64."""
    g = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return g * (math.sqrt(dim) / g.norm(dim=1, keepdim=True))


def spin_coefficients(dim: int, seed: int) -> Tensor:
    """``a_pqr ~ N(0, 1)`` i.i.d., ``[dim, dim, dim]`` float64, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim, dim, dim, generator=generator, dtype=torch.float64)


def symmetrize(coefficients: Tensor) -> Tensor:
    """``S_pqr``: the mean of ``a`` over the 6 permutations of its indices."""
    return sum(coefficients.permute(*p) for p in itertools.permutations(range(3))) / 6.0


def three_spin(x: Tensor, coefficients: Tensor) -> Tensor:
    """``f(x) = (1/d) Σ a_pqr x_p x_q x_r`` for ``x [B, d]`` → ``[B]`` (in ``x``'s dtype)."""
    d = coefficients.shape[0]
    if x.shape[-1] != d:
        raise OptionError("x", f"points have {x.shape[-1]} coordinates, the function takes {d}")
    a = coefficients.to(x.dtype)
    return torch.einsum("pqr,bp,bq,br->b", a, x, x, x) / d


def sphere_variance(coefficients: Tensor) -> float:
    """``Var_x f`` for ``x`` uniform on ``S^{d-1}(√d)``, in closed form (module docstring)."""
    d = coefficients.shape[0]
    s = symmetrize(coefficients)
    v = torch.einsum("pqq->p", s)
    return float((6 * s.pow(2).sum() + 9 * v.pow(2).sum()) / ((d + 2) * (d + 4)))


def slice_points(dim: int, theta: Tensor, i: int = 0, j: int = 1) -> Tensor:
    """The slides' 2-D slice: ``x_i = √d cos θ``, ``x_j = √d sin θ``, other coordinates 0.

    ``theta [T]`` → ``[T, dim]`` float64 points on the sphere (for plots of ``f`` and ``f_n``).
    """
    if not (0 <= i < dim and 0 <= j < dim and i != j):
        raise OptionError("slice", f"needs two different coordinates in [0, {dim}), got {i}, {j}")
    x = torch.zeros(theta.shape[0], dim, dtype=torch.float64)
    x[:, i] = math.sqrt(dim) * torch.cos(theta.double())
    x[:, j] = math.sqrt(dim) * torch.sin(theta.double())
    return x


class Spherical3Spin:
    """Regression on the spherical 3-spin function (Rotskoff & Vanden-Eijnden).

    Targets are real (``num_classes = 1`` output) and scored by ``mse`` with scale ½,
    the paper's ``ℓ = ½ E|f - f_n|²``.

    Args:
        dim: d, the dimension (paper: 25).
        coefficient_seed: draws ``a_pqr`` (the same function whatever the scenario's seed).
        train_size: ``P`` points of a fixed training set; omitted: online data, a fresh batch
            drawn uniformly on the sphere at every step (the paper's SGD).
        epoch_size: points that count as one epoch of online data; a fixed sample of this
            size is also the ``train`` split used to measure the training loss.
        n_val: validation points (0: none).
        n_test: held-out evaluation points.
        data_seed: draws the fixed points (``-1``: the scenario's seed); the online batches
            come from the simulation's own data generator.
    """

    name = "spherical_3spin"

    def __init__(
        self,
        *,
        dim: int = 25,
        coefficient_seed: int = 0,
        train_size: int | None = None,
        epoch_size: int = 1000,
        n_val: int = 0,
        n_test: int = 2000,
        data_seed: int = -1,
    ) -> None:
        for key, value, low in (
            ("dim", dim, 1),
            ("epoch_size", epoch_size, 1),
            ("n_val", n_val, 0),
            ("n_test", n_test, 0),
        ):
            if value < low:
                raise OptionError(key, f"must be >= {low}, got {value}")
        if train_size is not None and train_size < 1:
            raise OptionError("train_size", f"must be a positive integer, got {train_size}")
        if dim > 200:
            raise OptionError("dim", f"the {dim}³ coefficients would not fit; use at most 200")
        if data_seed < -1:
            raise OptionError(
                "data_seed", f"must be >= 0 or -1 (the scenario's seed), got {data_seed}"
            )
        self.dim = int(dim)
        self.coefficient_seed = int(coefficient_seed)
        self.train_size = train_size
        self.epoch_size = int(epoch_size)
        self.n_val = int(n_val)
        self.n_test = int(n_test)
        self.data_seed = int(data_seed)
        self.coefficients = spin_coefficients(self.dim, self.coefficient_seed)

    def __call__(self, x: Tensor) -> Tensor:
        """The target ``f(x)`` ``[B]`` for points ``x [B, d]``."""
        return three_spin(x, self.coefficients)

    @property
    def online(self) -> bool:
        """Fresh points every step (no ``train_size``): a batch schedule applies."""
        return self.train_size is None

    def sampler(self) -> Callable[[int, torch.Generator], tuple[Tensor, Tensor]]:
        """``(batch_size, generator) -> (x [P, d], f(x) [P])``: fresh points on the sphere."""

        def draw(batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            x = sphere_points(batch_size, self.dim, generator)
            return x.float(), self(x).float()

        return draw

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Draw the fixed splits (train, validation, test in that order from one generator)."""
        data_seed = seed if self.data_seed == -1 else self.data_seed
        generator = torch.Generator().manual_seed(data_seed)
        online = self.online
        splits = []
        for count in (self.epoch_size if online else self.train_size, self.n_val, self.n_test):
            x = sphere_points(count, self.dim, generator)
            splits.append((x.float(), self(x).float()))
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
        how = (
            f"online: fresh points every step, {self.epoch_size} per epoch"
            if online
            else f"{self.train_size} fixed training points"
        )
        source = (
            f"{self.name} (synthetic: d = {self.dim}, coefficient_seed {self.coefficient_seed}, "
            f"{how}, {self.n_val} val / {self.n_test} test points, data_seed {data_seed})"
        )
        log(f"data: {source}")
        return DataSplits(
            train_x=train_x,
            train_y=train_y,
            val_x=val_x,
            val_y=val_y,
            test_x=test_x,
            test_y=test_y,
            num_classes=1,
            input_shape=(self.dim,),
            source=source,
            loss="mse",
            loss_options={"scale": 0.5},
            sampler=self.sampler() if online else None,
        )


DATASETS = (Spherical3Spin,)
