"""Initial positions of a group's particles: grid, ring, gaussian, uniform, from file.

Each layout is a pure function ``(size, dim, generator, **options) -> [size, dim]``
in float64 (the group casts to its dtype), so the same seed always gives the
same positions whatever the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from particlesim.errors import OptionError


def gaussian(size: int, dim: int, generator: torch.Generator, *, spread: float = 1.0) -> Tensor:
    """Positions ``~ N(0, spread²)`` independently per coordinate."""
    return torch.randn(size, dim, generator=generator, dtype=torch.float64) * spread


def uniform(size: int, dim: int, generator: torch.Generator, *, spread: float = 1.0) -> Tensor:
    """Positions uniform in the cube ``[-spread, spread]^dim``."""
    return (torch.rand(size, dim, generator=generator, dtype=torch.float64) * 2 - 1) * spread


def grid(
    size: int,
    dim: int,
    generator: torch.Generator,
    *,
    spread: float = 1.0,
    shape: list[int] | None = None,
) -> Tensor:
    """A regular grid spanning ``[-spread, spread]`` on its first axes, 0 on the others.

    ``shape`` gives the grid's extent per axis (``[28, 28]`` for MNIST pixels,
    row-major like the flattened image); by default the most nearly square
    2-D grid (1-D when ``dim == 1``) holding ``size`` points.
    """
    if shape is None:
        if dim == 1:
            shape = [size]
        else:
            rows = math.isqrt(size)
            while size % rows:
                rows -= 1
            shape = [rows, size // rows]
    if math.prod(shape) != size:
        raise OptionError(
            "shape", f"grid shape {shape} holds {math.prod(shape)} points, not {size}"
        )
    if len(shape) > dim:
        raise OptionError("shape", f"grid shape {shape} has more axes than dim = {dim}")
    axes = [
        torch.linspace(-spread, spread, n, dtype=torch.float64)
        if n > 1
        else torch.zeros(1, dtype=torch.float64)
        for n in shape
    ]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(size, len(shape))
    out = torch.zeros(size, dim, dtype=torch.float64)
    out[:, : len(shape)] = mesh
    return out


def ring(size: int, dim: int, generator: torch.Generator, *, spread: float = 1.0) -> Tensor:
    """Equally spaced points on a circle of radius ``spread`` in the first two axes."""
    if dim < 2:
        raise OptionError("layout", f"a ring needs dim >= 2, got dim = {dim}")
    angle = torch.arange(size, dtype=torch.float64) * (2 * math.pi / size)
    out = torch.zeros(size, dim, dtype=torch.float64)
    out[:, 0] = spread * torch.cos(angle)
    out[:, 1] = spread * torch.sin(angle)
    return out


def from_file(size: int, dim: int, generator: torch.Generator, *, path: str) -> Tensor:
    """Positions read from a ``.npy`` file of shape ``[size, dim]`` (never unpickled)."""
    file = Path(path)
    if not file.is_file():
        raise OptionError("path", f"position file {file} not found")
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as exc:
        raise OptionError("path", f"{file} is not a readable .npy array: {exc}") from None
    if array.shape != (size, dim):
        raise OptionError(
            "path", f"{file} holds shape {list(array.shape)}, expected [{size}, {dim}]"
        )
    return torch.as_tensor(array, dtype=torch.float64)


LAYOUTS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian,
    "uniform": uniform,
    "grid": grid,
    "ring": ring,
    "file": from_file,
}
