"""System: ordered particle groups, the interactions between them, and potentials."""

from __future__ import annotations

import math
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

    Interactions point forward (source listed before target), or from a group to
    itself: a **recurrent** interaction, which makes the system a recurrent network read
    over time. Its input is then a sequence ``x [B, T, F]`` and each step ``t`` is::

        a_g(t) = Σ_{i: s→g, s before g} I_i(b_s(t)) + Σ_{i: g→g} I_i(b_g(t−1)) + bias_g
        b_g(t) = θ_g(a_g(t)),        b_g(−1) = 0

    (``h_t = φ(W_in x_t + W_rec h_{t−1} + b)`` for a hidden group), and the output is the
    output group's activity at the last step (a many-to-one readout, as Keras'
    ``SimpleRNN(return_sequences=False)``). Any interaction can be recurrent (dense,
    kernel of distance, modulated): its effective ``[N, N]`` weight is ``W_rec``.

    Args:
        groups: the particle groups in feed-forward order.
        interactions: couplings between them.
        potentials: extra energy terms.
        activations: one module per non-input group name (default identity).
        input_scaling: multiply the input by the input group's charge (eq. 11).
        input_noise: standard deviation of Gaussian noise added to the input in training
            mode only (Keras' ``GaussianNoise``); drawn from torch's global generator,
            whose state checkpoints keep.
    """

    def __init__(
        self,
        groups: Sequence[ParticleGroup],
        interactions: Sequence[Interaction],
        potentials: Sequence[Potential] = (),
        activations: Mapping[str, nn.Module] | None = None,
        *,
        input_scaling: bool = False,
        input_noise: float = 0.0,
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
            if interaction.source == interaction.target:
                if order[interaction.source] == 0:
                    raise OptionError(
                        f"interactions[{i}]",
                        f"the input group {interaction.source!r} cannot be recurrent (it holds "
                        "the data)",
                    )
                continue  # recurrent: the group's own activity at the previous time step
            if order[interaction.source] > order[interaction.target]:
                raise OptionError(
                    f"interactions[{i}]",
                    f"{interaction.source!r} -> {interaction.target!r} does not point forward "
                    "(the source must be listed before the target; a group coupled to itself "
                    "is recurrent)",
                )
        self.interactions = nn.ModuleList(interactions)
        self._incoming: dict[str, list[int]] = {name: [] for name in self.groups}
        self._recurrent: dict[str, list[int]] = {name: [] for name in self.groups}
        for i, interaction in enumerate(interactions):
            if interaction.source == interaction.target:
                self._recurrent[interaction.target].append(i)
            else:
                self._incoming[interaction.target].append(i)
        for name in list(self.groups)[1:]:
            if not self._incoming[name]:
                raise OptionError(
                    "interactions",
                    f"group {name!r} has no incoming interaction from an earlier group",
                )
        if not (math.isfinite(input_noise) and input_noise >= 0):
            raise OptionError("input_noise", f"must be a finite number >= 0, got {input_noise}")
        self.input_noise = float(input_noise)
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

    @property
    def recurrent(self) -> bool:
        """Whether a group is coupled to itself (the input is then a sequence ``[B, T, F]``)."""
        return any(self._recurrent.values())

    def activities(self, x: Tensor) -> dict[str, Tensor]:
        """Every group's output ``b_g [B, N_g]``, keyed by group name (for a recurrent
        system: at the last time step; the input group's entry is the whole sequence)."""
        if self.input_noise and self.training:
            x = x + self.input_noise * torch.randn_like(x)
        if not self.recurrent:
            if x.ndim > 2:
                raise OptionError(
                    "data",
                    f"the network is feed-forward and reads [batch, features], but the input "
                    f"is {list(x.shape)} (sequences?): use a model with a recurrent "
                    "interaction (a group coupled to itself)",
                )
            return self._step(self._prepared(x), {})
        if x.ndim != 3:
            looped = ", ".join(name for name, loops in self._recurrent.items() if loops)
            raise OptionError(
                "data",
                f"the network is recurrent (group {looped!r} is coupled to itself) and reads "
                f"sequences [batch, time, features], but the input is {list(x.shape)}",
            )
        sequence = self._prepared(x)
        B, T, F = sequence.shape
        inputs = self.input_group
        # the input's terms of every time step at once, and each W_rec formed once
        from_input = {
            i: self.interactions[i](
                sequence.reshape(B * T, F), inputs, self.groups[target]
            ).reshape(B, T, -1)
            for target, incoming in self._incoming.items()
            for i in incoming
            if self.interactions[i].source == inputs.name
        }
        weights = {
            i: self.interactions[i].effective_weight(self.groups[name], self.groups[name])
            for name, loops in self._recurrent.items()
            for i in loops
            if self.interactions[i].has_effective_weight
        }
        previous: dict[str, Tensor] = {}
        out: dict[str, Tensor] = {}
        for t in range(T):
            terms = {i: term[:, t] for i, term in from_input.items()}
            out = self._step(sequence[:, t], previous, terms, weights)
            previous = out
        out[inputs.name] = sequence
        return out

    def _prepared(self, x: Tensor) -> Tensor:
        """The input in slot order, scaled by the input charges where asked (eq. 11)."""
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
        return x

    def _step(
        self,
        x: Tensor,
        previous: Mapping[str, Tensor],
        terms: Mapping[int, Tensor] | None = None,
        weights: Mapping[int, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """One pass through the groups. ``previous``: each group's activity one time step
        earlier (empty at a sequence's first step and for a feed-forward system); ``terms``:
        interactions' contributions computed beforehand; ``weights``: recurrent
        interactions' effective weights, formed once per sequence."""
        out: dict[str, Tensor] = {self.input_group.name: x}
        for name, group in list(self.groups.items())[1:]:
            total = None
            for i in self._incoming[name]:
                interaction = self.interactions[i]
                if terms is not None and i in terms:
                    term = terms[i]
                else:
                    source = self.groups[interaction.source]
                    term = interaction(out[interaction.source], source, group)
                total = term if total is None else total + term
            if name in previous:  # b_g(t − 1) = 0 at the first step: no term
                for i in self._recurrent[name]:
                    if weights is not None and i in weights:
                        total = total + previous[name] @ weights[i].T
                    else:
                        total = total + self.interactions[i](previous[name], group, group)
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
