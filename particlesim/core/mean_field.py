"""Mean-field networks: parameters as interacting particles (Rotskoff & Vanden-Eijnden 2018).

A one-hidden-layer network in mean-field form is an average over ``n`` particles, each
carrying a charge ``c_i`` and a unit's parameters ``y_i``::

    f_n(x) = (1/n) Σ_i c_i φ(x, y_i),        φ(x, y) = h(a·x + b),  y = (a, b)

(slides "Neural networks as particle systems"; arXiv:1805.00915). The ``1/n`` makes the
loss ``ℓ = ½ E|f - f_n|²`` a one-body term plus a two-body interaction between particles,
so that gradient descent on ``L = n·ℓ`` moves each particle at a rate independent of ``n``
and the empirical distribution of the particles has a limit as ``n → ∞``.

In a :class:`~particlesim.core.System` the particles are one group (``position`` =
``a_i ∈ R^D``, ``bias`` = ``b_i``, ``charge`` = ``c_i``) between the input and the output::

    input [d] --mean_field_units--> particles [n] (bias b_i, activation h) --mean_field--> output

* :class:`MeanFieldUnits` gives each particle its pre-activation ``k(u(x), a_i)`` where
  ``u(x) = Σ_k x_k r_k`` places the data point among the particles (``r_k`` are the
  input particles' positions; with ``r_k = e_k``, ``u(x) = x``). With the
  :class:`DotProductKernel` ``k(u, a) = u·a``, so the group's bias and activation make
  ``φ(x, y_i) = h(a_i·x + b_i)``; ``h`` comes from the activation registry (sigmoid in the
  paper); another kernel (``gaussian``: ``φ = exp(-|x - a_i|²/σ²)``) or activation gives
  another unit function.
* :class:`MeanFieldInteraction` averages the units with the particles' charges:
  ``f_n(x) = (1/n) Σ_i c_i φ_i(x)``.

:func:`mean_field_output` is the same function written out in one expression (tests and
analysis compare the system against it). :class:`EffectiveNoise` reports the effective
temperature ``θ = Δt/P`` of stochastic gradient descent with step ``Δt`` and batch ``P``.

These stay in the engine because they are generic mechanisms: the interactions and the
kernel couple any groups of any scenario (``[[groups]]`` or a model), with any registered
kernel and activation, and ``effective_noise`` applies to any run with SGD; the rotskoff
plugin adds only the paper's data set, model shorthand and experiment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import Interaction
from particlesim.core.observables import Observable
from particlesim.errors import OptionError
from particlesim.kernels.base import Kernel

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation


class DotProductKernel(Kernel):
    """``k(r_h, r_j) = r_h · r_j`` → ``[M, N]``: the linear unit of a mean-field network.

    With the data point as one position set and the particles' weight vectors ``a_i`` as the
    other, ``k(x, a_i) = a_i·x`` is the pre-activation of a unit (before bias and ``h``).

    Example:
        >>> import torch
        >>> DotProductKernel()(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]))
        tensor([[11.]])
    """

    name = "dot_product"

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        return target @ source.T


def data_positions(x: Tensor, inputs: Tensor) -> Tensor:
    """``u(x) = Σ_k x_k r_k``: data rows ``x [B, N_in]`` placed in position space ``[B, D]``.

    ``inputs [N_in, D]`` are the input particles' positions; with the identity (``r_k =
    e_k``) the data point is its own position.
    """
    return x @ inputs


class MeanFieldUnits(Interaction):
    """Pre-activations of mean-field units: ``z_i(x) = k(u(x), a_i)``, ``[B, n]``.

    The target group holds the particles (``position [n, D]`` = ``a_i``, optional
    ``bias``); the source is the input group, whose positions ``r_k`` embed the data as
    ``u(x) = Σ_k x_k r_k`` (see :func:`data_positions`). The target's bias and activation
    complete the unit: ``φ(x, y_i) = h(k(u(x), a_i) + b_i)``.

    Args:
        kernel: a registered kernel; ``dot_product`` gives ``a_i·x`` (the paper's units),
            a radial kernel gives radial-basis units ``k(|x - a_i|)``.
    """

    name = "mean_field_units"

    def __init__(self, source: ParticleGroup, target: ParticleGroup, *, kernel: Kernel) -> None:
        super().__init__(source, target)
        if source.dim != target.dim:
            raise OptionError(
                "target",
                f"groups {source.name!r} (dim {source.dim}) and {target.name!r} "
                f"(dim {target.dim}) live in different dimensions",
            )
        if kernel.channels != 1:
            raise OptionError("kernel", "mean-field units take a single-width kernel")
        self.kernel = kernel

    def forward(self, b: Tensor, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        return self.kernel(data_positions(b, source.position), target.position)

    def effective_weight(self, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        """``k(a_i, r_k)`` ``[n, N_in]``: the weight matrix itself for the dot-product kernel."""
        return self.kernel(target.position, source.position)


class MeanFieldInteraction(Interaction):
    """The mean-field read-out ``f_n(x) = (1/n) Σ_i c_i φ_i(x)`` (Rotskoff & Vanden-Eijnden).

    The source group holds the ``n`` particles; its output ``b [B, n]`` is ``φ(x, y_i)``
    (made by :class:`MeanFieldUnits`, the group's bias and activation) and its ``charge``
    is ``c_i``: ``[n]`` for one output, ``[n, K]`` for ``K`` outputs. The ``1/n`` is the
    mean-field scaling: ``n`` i.i.d. particles give ``f_n → E[c φ]`` (law of large numbers)
    with ``O(n^{-1/2})`` fluctuations (central limit theorem).

    Example:
        >>> import torch
        >>> from particlesim.core.group import ParticleGroup
        >>> hidden = ParticleGroup("particles", {"position": torch.zeros(4, 2),
        ...                                      "charge": torch.tensor([1.0, 2.0, 3.0, 6.0])})
        >>> out = ParticleGroup("output", {"position": torch.zeros(1, 2)}, frozen=["position"])
        >>> MeanFieldInteraction(hidden, out)(torch.ones(1, 4), hidden, out).tolist()
        [[3.0]]
    """

    name = "mean_field"

    def __init__(self, source: ParticleGroup, target: ParticleGroup) -> None:
        super().__init__(source, target)
        if not source.has("charge"):
            raise OptionError(
                "source", f"group {source.name!r} has no charge field (the particles' c_i)"
            )
        outputs = 1 if source.charge.ndim == 1 else int(source.charge.shape[1])
        if outputs != target.size:
            raise OptionError(
                "target",
                f"group {target.name!r} has {target.size} particle(s) but the charges of "
                f"{source.name!r} give {outputs} output(s)",
            )

    def forward(self, b: Tensor, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        charge = source.charge if source.charge.ndim == 2 else source.charge[:, None]
        return (b @ charge) / source.size

    def effective_weight(self, source: ParticleGroup, target: ParticleGroup) -> Tensor:
        charge = source.charge if source.charge.ndim == 2 else source.charge[:, None]
        return charge.T / source.size


def mean_field_output(
    x: Tensor,
    position: Tensor,
    charge: Tensor,
    bias: Tensor | None = None,
    activation: Callable[[Tensor], Tensor] = torch.sigmoid,
) -> Tensor:
    """``f_n(x) = (1/n) Σ_i c_i h(a_i·x + b_i)`` for ``x [B, d]`` → ``[B]``.

    ``position [n, d]`` are the ``a_i``, ``charge [n]`` the ``c_i``, ``bias [n]`` the
    ``b_i`` (none: 0) and ``activation`` is ``h``. The reference the system is tested against.
    """
    pre = x @ position.T
    if bias is not None:
        pre = pre + bias
    return activation(pre) @ charge / position.shape[0]


class EffectiveNoise(Observable):
    """The effective temperature of stochastic gradient descent, ``θ = Δt / P``, shape ``[]``.

    Rotskoff & Vanden-Eijnden ("Discrete training set and stochastic gradient descent"):
    drawing a fresh batch of ``P`` points at every step of size ``Δt`` gives the SDE
    ``dZ = -∇L dt + sqrt(θ) dB`` with ``θ = Δt/P``. ``Δt`` is the integrator's current
    step size and ``P`` the size of the last training batch (``[run] batch_schedule``
    applied, as the ``batch_size`` observable reports it).
    """

    name = "effective_noise"
    unit = ""
    description = "effective SGD temperature θ = Δt / P (step size over batch size)"

    def compute(self, simulation: Simulation) -> float:
        step = max(simulation.step - 1, 0)
        return simulation.integrator.step_size(step) / simulation.batch_size_at(step)


MEAN_FIELD_INTERACTIONS: tuple[type[Interaction], ...] = (MeanFieldUnits, MeanFieldInteraction)
MEAN_FIELD_KERNELS: tuple[type[Kernel], ...] = (DotProductKernel,)
MEAN_FIELD_OBSERVABLES: tuple[type[Observable], ...] = (EffectiveNoise,)
