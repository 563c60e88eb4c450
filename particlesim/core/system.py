"""System: ordered particle groups, the interactions between them, and potentials."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from particlesim.core.group import ParticleGroup
from particlesim.core.interactions import Interaction
from particlesim.core.potentials import Potential
from particlesim.errors import OptionError


class System(nn.Module):
    """A network as a particle system; ``forward`` is the network.

    The first group is the input layer and the last the output layer. Each
    other group's pre-activation is the sum of its incoming interactions
    (plus its ``bias`` field when it has one), passed through the group's
    activation module::

        b_0 = q_0 ⊙ x            (input scaling, Lange eq. 11, when enabled)
        a_g = Σ_{i: s→g} I_i(b_s) + bias_g
        b_g = θ_g(a_g)

    Interactions must point forward (source listed before target).

    Args:
        groups: the particle groups in feed-forward order.
        interactions: couplings between them.
        potentials: extra energy terms.
        activations: one module per non-input group name (default identity).
        input_scaling: multiply the input by the input group's charge (eq. 11).
    """

    def __init__(
        self,
        groups: Sequence[ParticleGroup],
        interactions: Sequence[Interaction],
        potentials: Sequence[Potential] = (),
        activations: Mapping[str, nn.Module] | None = None,
        *,
        input_scaling: bool = False,
    ) -> None:
        super().__init__()
        if len(groups) < 2:
            raise OptionError("groups", f"a system needs at least 2 groups, got {len(groups)}")
        self.groups = nn.ModuleDict()
        for group in groups:
            if group.name in self.groups:
                raise OptionError("groups", f"duplicate group name {group.name!r}")
            self.groups[group.name] = group
        order = {name: i for i, name in enumerate(self.groups)}
        for i, interaction in enumerate(interactions):
            for end in (interaction.source, interaction.target):
                if end not in order:
                    raise OptionError(
                        f"interactions[{i}]", f"unknown group {end!r}; groups: {', '.join(order)}"
                    )
            if order[interaction.source] >= order[interaction.target]:
                raise OptionError(
                    f"interactions[{i}]",
                    f"{interaction.source!r} -> {interaction.target!r} does not point forward "
                    "(the source must be listed before the target)",
                )
        self.interactions = nn.ModuleList(interactions)
        self._incoming: dict[str, list[int]] = {name: [] for name in self.groups}
        for i, interaction in enumerate(interactions):
            self._incoming[interaction.target].append(i)
        for name in list(self.groups)[1:]:
            if not self._incoming[name]:
                raise OptionError("interactions", f"group {name!r} has no incoming interaction")
        self.potentials = nn.ModuleList(potentials)
        self.activations = nn.ModuleDict(
            {name: (activations or {}).get(name, nn.Identity()) for name in list(self.groups)[1:]}
        )
        for name, activation in self.activations.items():
            fields = getattr(activation, "particle_fields", None)
            for field_name, parameter in (fields() if callable(fields) else {}).items():
                self.groups[name].attach_field(field_name, parameter)  # shared: one tensor
        self.input_scaling = input_scaling
        if input_scaling and not self.input_group.has("charge"):
            raise OptionError("input_scaling", "the input group has no charge field to scale by")

    @property
    def input_group(self) -> ParticleGroup:
        return next(iter(self.groups.values()))

    @property
    def output_group(self) -> ParticleGroup:
        return list(self.groups.values())[-1]

    @property
    def device(self) -> torch.device:
        return self.input_group.position.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_group.position.dtype

    def forward(self, x: Tensor) -> Tensor:
        """Map inputs ``x [B, N_in]`` to outputs ``[B, N_out]`` (logits for classifiers).

        Where neurons were moved between slots (an ``id`` field, see
        :mod:`particlesim.core.moves`), output ``c`` is still class ``c``: the output group's
        slots are read in the order of their ``id``.
        """
        out = self.activities(x)[self.output_group.name]
        outputs = self.output_group
        return out if not outputs.has("id") else out.index_select(-1, torch.argsort(outputs.id))

    def activities(self, x: Tensor) -> dict[str, Tensor]:
        """Every group's output ``b_g [B, N_g]``, keyed by group name."""
        inputs = self.input_group
        if x.shape[-1] != inputs.size:
            raise OptionError(
                "input",
                f"input has {x.shape[-1]} features but group {inputs.name!r} "
                f"has {inputs.size} particles",
            )
        if inputs.has("id"):  # input slot s holds feature id[s] (neurons were moved)
            x = x.index_select(-1, inputs.id)
        if self.input_scaling:
            charge = inputs.charge if inputs.charge.ndim == 1 else inputs.charge[:, 0]
            x = x * charge
        out: dict[str, Tensor] = {inputs.name: x}
        for name, group in list(self.groups.items())[1:]:
            total = None
            for i in self._incoming[name]:
                interaction = self.interactions[i]
                term = interaction(out[interaction.source], self.groups[interaction.source], group)
                total = term if total is None else total + term
            if group.has("bias"):
                total = total + group.bias
            out[name] = self.activations[name](total)
        return out

    def potential_energies(self) -> dict[str, Tensor]:
        """Unscaled energy of each potential, keyed by ``potential/<name>``."""
        return {f"potential/{p.name}": p.energy(self) for p in self.potentials}

    def potential_energy(self) -> Tensor:
        """``Σ_p c_p E_p`` (0 when there are no potentials)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for potential in self.potentials:
            total = total + potential(self)
        return total

    def effective_weights(self) -> dict[str, Tensor]:
        """``[M, N]`` weight of every interaction that has one, keyed ``"source->target"``."""
        return {
            f"{i.source}->{i.target}": i.effective_weight(
                self.groups[i.source], self.groups[i.target]
            )
            for i in self.interactions
            if i.has_effective_weight
        }

    def count_parameters(self) -> int:
        """Number of learnable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
