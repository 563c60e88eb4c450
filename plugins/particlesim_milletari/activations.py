"""Milletari's expected signal propagation (ESP) activation and the observable of its β.

``esp`` (one learnable β per layer), ``esp_per_neuron`` (one per neuron, shown as the
group's ``beta`` field) and the observable ``activation_beta`` are this paper's
mechanism, so the ``milletari`` plugin registers them; any model that names an
activation (``mlp``, ``particle_network``, …) can use them once the plugin is loaded::

    [model]
    name = "mlp"
    sizes = [2, 8, 2, 1]
    activation = "esp"

    [[observables]]
    name = "activation_beta"
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from particlesim.core.activations import Activation
from particlesim.core.observables import Observable
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation


class ESP(Activation):
    """Expected signal propagation ``θ(a) = a·σ(β a)`` with a learnable inverse temperature β.

    Milletari, Chotibut & Trevisanutto (2018, arXiv:1805.08786): a unit's output is the
    expected value of its gated input, ``⟨h⟩ = ∂_β log Z = h·σ(β h)`` for the two-state
    gate ``Z = 1 + e^{β h}`` ("Expected Signal Propagation" slide). ``β = 1`` is swish/SiLU;
    as ``β → ∞`` (the noiseless limit) it tends to ReLU uniformly,
    ``|θ(a) - max(a, 0)| ≤ W(1/e)/β ≈ 0.2785/β`` (``W(1/e)`` is the maximum of
    ``u·σ(-u)``, reached at ``u = 1 + W(1/e)``). β is part of the parameters
    ``θ^[l] = (w^[l], b^[l], β^[l])`` whose Hessian the paper studies.

    ``∂θ/∂β = a²·σ(βa)·(1 - σ(βa))`` and ``∂θ/∂a = σ(βa)·(1 + βa·(1 - σ(βa)))``.

    β is used as it is (not re-parametrised), so gradient steps may move it through 0 to
    negative values; it starts at ``beta``.

    Args:
        size: the group size N (needed for ``per_neuron``).
        beta: initial β (finite and > 0).
        per_neuron: one β per particle ``[N]`` (shown as the group's ``beta`` field and
            recorded in trajectories) instead of one scalar per layer.
        learnable: β is an ``nn.Parameter`` the integrator moves; otherwise a buffer.

    Registered as ``esp`` (one learnable β per layer, as in the paper) and
    ``esp_per_neuron`` (one learnable β per neuron).

    Example:
        >>> import torch
        >>> esp = ESP(size=3, beta=1.0)
        >>> x = torch.tensor([[-1.0, 0.0, 2.0]])
        >>> torch.allclose(esp(x), torch.nn.functional.silu(x))
        True
    """

    name = "esp"
    #: Default of ``per_neuron`` for the registered name.
    default_per_neuron: ClassVar[bool] = False

    def __init__(
        self,
        size: int | None = None,
        *,
        beta: float = 1.0,
        per_neuron: bool | None = None,
        learnable: bool = True,
    ) -> None:
        super().__init__(size)
        per_neuron = self.default_per_neuron if per_neuron is None else per_neuron
        if not (math.isfinite(beta) and beta > 0):
            raise OptionError("beta", f"must be a finite number > 0, got {beta}")
        if per_neuron and (size is None or size < 1):
            raise OptionError("size", f"a per-neuron β needs the group size, got {size!r}")
        shape = (int(size),) if per_neuron else ()
        value = torch.full(shape, float(beta))
        if learnable:
            self.beta = nn.Parameter(value)
        else:
            self.register_buffer("beta", value)
        self.per_neuron = bool(per_neuron)
        self.learnable = bool(learnable)

    def forward(self, a: Tensor) -> Tensor:
        return a * torch.sigmoid(self.beta * a)

    def particle_fields(self) -> dict[str, nn.Parameter]:
        """``{"beta": β [N]}`` for a learnable per-neuron β, else nothing."""
        if self.per_neuron and isinstance(self.beta, nn.Parameter):
            return {"beta": self.beta}
        return {}

    def extra_repr(self) -> str:
        kind = "per neuron" if self.per_neuron else "per layer"
        fixed = "" if self.learnable else ", fixed"
        return f"β {kind}{fixed}, mean {float(self.beta.detach().mean()):.4g}"


class ESPPerNeuron(ESP):
    """ESP ``a·σ(β_i a)`` with one learnable β per neuron (the group's ``beta`` field)."""

    name = "esp_per_neuron"
    default_per_neuron = True


#: ``max_u u·σ(-u) = W(1/e)`` (Lambert W): the sup-distance between ESP at β = 1 and ReLU.
ESP_RELU_GAP = 0.2784645427610738


class ActivationBeta(Observable):
    """Mean β of a group's activation (ESP's inverse temperature), shape ``[]``.

    A per-layer β is the value itself; a per-neuron β is also recorded in full as the
    group's ``beta`` field. Computed from the system, so it is cheap.

    Args:
        group: the group whose activation carries a ``beta`` (default: the first such group).
    """

    name = "activation_beta"
    unit = ""
    description = "mean β of the activation of a group"

    def __init__(self, *, group: str | None = None) -> None:
        self.group = group

    def compute(self, simulation: Simulation) -> Tensor:
        activations = dict(simulation.system.activations.items())
        with_beta = [
            n for n, m in activations.items() if isinstance(getattr(m, "beta", None), Tensor)
        ]
        name = self.group if self.group is not None else (with_beta or [None])[0]
        if name not in with_beta:
            raise OptionError(
                "group",
                f"activation_beta: group {name!r} has no activation with a β; "
                f"groups with one: {', '.join(with_beta) or 'none'}",
            )
        return activations[name].beta.detach().double().mean()


ACTIVATIONS: tuple[type[Activation], ...] = (ESP, ESPPerNeuron)
OBSERVABLES: tuple[type[Observable], ...] = (ActivationBeta,)
