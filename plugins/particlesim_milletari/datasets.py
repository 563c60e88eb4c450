"""Two-dimensional binary classification data sets (Milletari et al. 2018, "Results I").

Three seeded synthetic sets of points in the plane with 0/1 labels, scored by
``binary_cross_entropy`` on a single output logit (``num_classes = 1``):

* ``linear_2d``: points uniform in ``[-1, 1]²`` labelled by the side of a line through
  the origin at a random angle; points closer than ``margin`` to the line are redrawn,
  so the two classes are linearly separable with that margin.
* ``moons_2d``: two interleaving half circles (the "two moons"), with Gaussian noise.
* ``circles_2d``: two concentric circles (radii 1 and ``factor``), with Gaussian noise.

The same ``data_seed`` gives the same points whatever the scenario's seed, so that
training seeds (initialisations) are compared on one data set; ``data_seed = -1``
follows the scenario's seed instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from particlesim.data.datasets import DataSplits
from particlesim.errors import OptionError


class PlaneDataset:
    """Base class: ``n_train``/``n_val``/``n_test`` points drawn by :meth:`sample`.

    Args:
        n_train: training points.
        n_val: validation points (0: no validation split).
        n_test: test points.
        noise: standard deviation of the Gaussian noise added to each coordinate.
        data_seed: seeds the points (``-1``: use the scenario's seed).
    """

    name: ClassVar[str] = ""
    #: A fixed sample (scenario validation refuses a batch schedule for it).
    online: ClassVar[bool] = False
    default_noise: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        n_train: int = 500,
        n_val: int = 0,
        n_test: int = 500,
        noise: float | None = None,
        data_seed: int = 0,
    ) -> None:
        for key, value, least in (
            ("n_train", n_train, 1),
            ("n_val", n_val, 0),
            ("n_test", n_test, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(key, f"must be an integer >= {least}, got {value!r}")
        noise = self.default_noise if noise is None else noise
        if not (math.isfinite(noise) and noise >= 0):
            raise OptionError("noise", f"must be a finite number >= 0, got {noise}")
        if isinstance(data_seed, bool) or data_seed < -1:
            raise OptionError("data_seed", f"must be an integer >= 0 (or -1), got {data_seed!r}")
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.noise = float(noise)
        self.data_seed = data_seed

    def prepare(self, generator: torch.Generator) -> None:
        """Draw what all splits share (a separating line, …) before the points; default none."""

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` points ``[n, 2]`` (float32) and labels ``[n]`` (float32 0/1)."""
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:
        """What a run records as the data source."""
        return f"noise {self.noise:g}"

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Draw the three splits from one generator (train, then validation, then test)."""
        data_seed = seed if self.data_seed == -1 else self.data_seed
        generator = torch.Generator().manual_seed(int(data_seed))
        self.prepare(generator)
        train_x, train_y = self.sample(self.n_train, generator)
        val_x, val_y = self.sample(self.n_val, generator)
        test_x, test_y = self.sample(self.n_test, generator)
        source = (
            f"{self.name} (synthetic: {self.n_train} train / {self.n_val} val / "
            f"{self.n_test} test points, {self.describe()}, data_seed {data_seed})"
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
            input_shape=(2,),
            source=source,
            loss="binary_cross_entropy",
        )

    def _noisy(self, points: Tensor, generator: torch.Generator) -> Tensor:
        if self.noise > 0:
            points = points + self.noise * torch.randn(
                points.shape, generator=generator, dtype=points.dtype
            )
        return points


class LinearPlane(PlaneDataset):
    """Linearly separable points: the side of a random line through the origin.

    Points are uniform in ``[-1, 1]²``; those within ``margin`` of the line are redrawn,
    then noise (default 0, which keeps the margin) is added. The line's angle is drawn
    from the data seed.

    Args:
        margin: half-width of the empty band around the separating line (0 ≤ margin < 0.5).
        **options: see :class:`PlaneDataset`.
    """

    name = "linear_2d"

    def __init__(
        self,
        *,
        n_train: int = 500,
        n_val: int = 0,
        n_test: int = 500,
        noise: float | None = None,
        data_seed: int = 0,
        margin: float = 0.1,
    ) -> None:
        super().__init__(
            n_train=n_train, n_val=n_val, n_test=n_test, noise=noise, data_seed=data_seed
        )
        if not (math.isfinite(margin) and 0 <= margin < 0.5):
            raise OptionError("margin", f"must be in [0, 0.5), got {margin}")
        self.margin = float(margin)
        self.normal = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def describe(self) -> str:
        return f"margin {self.margin:g}, {super().describe()}"

    def prepare(self, generator: torch.Generator) -> None:
        """The unit normal of the separating line, at a uniformly random angle."""
        angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * math.pi
        self.normal = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        kept: list[Tensor] = []
        count = 0
        while count < n:
            points = torch.rand(2 * (n - count) + 8, 2, generator=generator, dtype=torch.float64)
            points = points * 2 - 1
            points = points[(points @ self.normal).abs() >= self.margin]
            kept.append(points)
            count += points.shape[0]
        points = torch.cat(kept)[:n] if kept else torch.zeros(0, 2, dtype=torch.float64)
        labels = (points @ self.normal > 0).double()
        return self._noisy(points, generator).float(), labels.float()


class Moons(PlaneDataset):
    """Two interleaving half circles, centred on the origin (labels 0: upper, 1: lower).

    Class 0: ``(cos t, sin t)``, class 1: ``(1 - cos t, 1/2 - sin t)`` with
    ``t ~ U[0, π]``, shifted by ``(-1/2, -1/4)``; then Gaussian noise (default 0.1).
    Not linearly separable.
    """

    name = "moons_2d"
    default_noise = 0.1

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % 2).double()
        t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
        points = torch.where(labels[:, None] > 0, lower, upper)
        points = points - torch.tensor([0.5, 0.25], dtype=torch.float64)
        return self._noisy(points, generator).float(), labels.float()


class Circles(PlaneDataset):
    """Two concentric circles: class 0 on radius 1, class 1 on radius ``factor``; noise 0.05.

    Args:
        factor: radius of the inner circle (0 < factor < 1).
        **options: see :class:`PlaneDataset`.
    """

    name = "circles_2d"
    default_noise = 0.05

    def __init__(
        self,
        *,
        n_train: int = 500,
        n_val: int = 0,
        n_test: int = 500,
        noise: float | None = None,
        data_seed: int = 0,
        factor: float = 0.5,
    ) -> None:
        super().__init__(
            n_train=n_train, n_val=n_val, n_test=n_test, noise=noise, data_seed=data_seed
        )
        if not 0 < factor < 1:
            raise OptionError("factor", f"must be in (0, 1), got {factor}")
        self.factor = float(factor)

    def describe(self) -> str:
        return f"factor {self.factor:g}, {super().describe()}"

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % 2).double()
        t = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
        radius = torch.where(labels > 0, self.factor, 1.0)
        points = radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        return self._noisy(points, generator).float(), labels.float()


DATASETS: tuple[type[PlaneDataset], ...] = (LinearPlane, Moons, Circles)
