"""TopoLoss (Deb et al. 2025, "TopoNets"): a smoothness potential on cortical sheets.

The ``n`` output units of a layer are laid on a sheet of ``H × W`` cells (``H`` the largest
divisor of ``n`` not above ``√n``, ``W = n / H``; a prime ``n`` gives a ``1 × n`` strip), each
cell holding the unit's incoming weight vector. The sheet is shrunk by a factor with
bilinear interpolation and blown back up to ``H × W``; the loss is one minus the mean cosine
similarity between each unit's weights and their blurred version,

    E_layer = 1 − mean_cells cos(w, up(down(w))),

so it is 0 for a sheet whose weights vary smoothly across it. The potential averages
``τ · E_layer`` over the chosen layers (``TopoLoss.compute`` with ``reduce_mean``).

Source: the authors' package ``topoloss`` 0.0.2 (PyPI), files ``topoloss/core.py``
(``TopoLoss.get_layerwise_topo_losses``, ``compute``), ``topoloss/losses/laplacian_pyramid.py``
(``laplacian_pyramid_loss``: ``F.interpolate(grid, scale_factor=(1/f_h, 1/f_w))`` then
``F.interpolate(…, size=(H, W))``, ``1 − cosine_similarity(…).mean()``) and
``topoloss/cortical_sheet/{common,output}.py`` (``find_cortical_sheet_size``; a Linear weight
``[n, in]`` reshaped to ``[H, W, in]``, a Conv2d weight ``[n, c, kh, kw]`` to
``[H, W, c·kh·kw]``). The same calls are made here, so values and gradients agree with the
package to float rounding (``tests/test_topoloss.py`` compares them where it is installed).

Choices where the package is silent or inconsistent:

* It asserts ``factor ≤ H`` (and ``≤ W``), but what the formula needs is a shrunk sheet of
  at least one cell, ``⌊H / f⌋ ≥ 1``: the two differ for non-integer factors (``H = 3``,
  ``f = 2.5``: allowed by both; ``H = 2``, ``f = 2.5``: refused by the assertion, and the
  formula indeed has no row). This plugin checks the formula's condition and names the
  interaction and its sheet when it fails.
* It acts on ``nn.Linear``/``nn.Conv2d`` modules; here it acts on any interaction's
  ``[M, N]`` weight — a dense layer's parameter, or a particle layer's effective weight
  ``W_hj = q_h k(r_h, r_j)``, through which the gradient reaches positions and charges.

In a scenario::

    [[potentials]]
    name = "topoloss"
    tau = 1.0                       # the package's LaplacianPyramid.scale
    factor = 3.0                    # shrink factor on both axes (factor_h / factor_w apart)
    interactions = ["input -> hidden1"]   # default: every interaction with a weight
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from particlesim import hookimpl
from particlesim.core.potentials import Potential
from particlesim.errors import OptionError, ParticlesimError

if TYPE_CHECKING:
    from particlesim.core.system import System

Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]


def sheet_shape(units: int) -> tuple[int, int]:
    """``(H, W)`` of the cortical sheet of ``units`` outputs: ``H`` the largest divisor of
    ``units`` with ``H ≤ √units``, ``W = units / H`` (``find_cortical_sheet_size``)."""
    if units < 1:
        raise ValueError(f"a sheet needs at least one unit, got {units}")
    height = int(math.sqrt(units))
    while units % height:
        height -= 1
    return height, units // height


def smoothness_loss(
    weight: Tensor, factor_h: float, factor_w: float, interpolation: Interpolation = "bilinear"
) -> Tensor:
    """``1 − mean cos(w, up(down(w)))`` of one layer's weight ``[n, …]`` on its sheet."""
    n = weight.shape[0]
    height, width = sheet_shape(n)
    grid = weight.reshape(n, -1).reshape(height, width, -1).permute(2, 0, 1).unsqueeze(0)
    down = F.interpolate(grid, scale_factor=(1 / factor_h, 1 / factor_w), mode=interpolation)
    up = F.interpolate(down, size=grid.shape[2:], mode=interpolation)
    flat = grid.squeeze(0).permute(1, 2, 0).reshape(n, -1)
    blurred = up.squeeze(0).permute(1, 2, 0).reshape(n, -1)
    return 1 - F.cosine_similarity(flat, blurred, dim=-1).mean()


class TopoLossPotential(Potential):
    """``E = mean over layers of τ · (1 − mean cos(w, up(down(w))))`` (see the module).

    Args:
        tau: τ, the scale of every layer's loss (the package's ``scale``).
        factor: the shrink factor on both sheet axes (> 0; ``factor_h``/``factor_w`` set
            them apart).
        factor_h, factor_w: the shrink factor along the sheet's height / width.
        interpolation: ``F.interpolate``'s mode (the package uses ``"bilinear"``).
        interactions: which interactions, as ``"source -> target"``; default every one
            with an ``[M, N]`` weight.
    """

    name = "topoloss"

    def __init__(
        self,
        *,
        coefficient: float = 1.0,
        tau: float = 1.0,
        factor: float = 2.0,
        factor_h: float | None = None,
        factor_w: float | None = None,
        interpolation: Interpolation = "bilinear",
        interactions: Sequence[str] | None = None,
    ) -> None:
        super().__init__(coefficient=coefficient)
        if not (math.isfinite(tau) and tau >= 0):
            raise OptionError("tau", f"must be a finite number >= 0, got {tau}")
        self.factor_h = float(factor if factor_h is None else factor_h)
        self.factor_w = float(factor if factor_w is None else factor_w)
        for key, value in (("factor_h", self.factor_h), ("factor_w", self.factor_w)):
            if not (math.isfinite(value) and value > 0):
                raise OptionError(
                    "factor" if factor_h is None and factor_w is None else key,
                    f"must be a finite number > 0, got {value}",
                )
        self.tau = float(tau)
        self.interpolation = interpolation
        self.interactions = None if interactions is None else [_key(i) for i in interactions]

    def _weights(self, system: System) -> list[tuple[str, Tensor]]:
        chosen = []
        known = []
        for interaction in system.interactions:
            key = _key(f"{interaction.source} -> {interaction.target}")
            known.append(key)
            if not getattr(interaction, "has_effective_weight", True):
                continue
            if self.interactions is not None and key not in self.interactions:
                continue
            source = system.groups[interaction.source]
            target = system.groups[interaction.target]
            chosen.append((key, interaction.effective_weight(source, target)))
        missing = [i for i in self.interactions or [] if i not in known]
        if missing:
            raise ParticlesimError(
                f"potential 'topoloss': no interaction {missing[0]!r}; interactions: "
                f"{', '.join(known)}"
            )
        return chosen

    def energy(self, system: System) -> Tensor:
        losses = []
        for key, weight in self._weights(system):
            height, width = sheet_shape(weight.shape[0])
            rows, cols = math.floor(height / self.factor_h), math.floor(width / self.factor_w)
            if rows < 1 or cols < 1:
                raise ParticlesimError(
                    f"potential 'topoloss': interaction {key} has {weight.shape[0]} outputs, a "
                    f"{height} × {width} sheet; shrinking it by factor_h = {self.factor_h:g}, "
                    f"factor_w = {self.factor_w:g} leaves {rows} × {cols} cells (use factors "
                    f"up to {height} and {width})"
                )
            losses.append(
                self.tau * smoothness_loss(weight, self.factor_h, self.factor_w, self.interpolation)
            )
        if not losses:
            return torch.zeros((), dtype=system.dtype, device=system.device)
        return torch.stack(losses).mean()


def _key(name: str) -> str:
    """``"a->b"``, ``"a -> b"`` → ``"a -> b"``."""
    source, _, target = name.partition("->")
    return f"{source.strip()} -> {target.strip()}"


@hookimpl
def particlesim_register_potentials():
    return [TopoLossPotential]


@hookimpl
def particlesim_register_reproductions():
    from particlesim_topoloss.experiments import TopoLossReproduction

    return [TopoLossReproduction]
