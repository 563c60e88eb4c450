"""The Hessian of the energy: eigenvalues, index of critical points, spectral density.

The loss landscape near a point θ is characterised by the eigenvalues ``λ_j`` of the
Hessian ``H = ∂²U/∂θ∂θ`` of the energy ``U = L + Σ_p c_p E_p`` (data loss on a fixed
evaluation batch plus the potentials) with respect to the learnable parameters
(Milletari, Chotibut & Trevisanutto 2018, slide "Optimization with ESP: geometry of the
loss function"; Sagun, Bottou & LeCun 2016; Dauphin et al. 2014). Two indices summarise
the spectrum of ``P`` eigenvalues:

* ``α = (1/P) Σ_j I(λ_j < -τ)``: the fraction of negative eigenvalues (descent directions;
  ``α = 0`` at a minimum, ``α > 0`` at a saddle);
* ``γ = (1/P) Σ_j I(|λ_j| ≤ τ)``: the fraction of (near-)zero eigenvalues (flat directions,
  plateaus of the energy manifold);

with the tolerance ``τ = tol · max_j |λ_j|`` (default ``tol = 1e-6``). The paper's
``I(λ_j = 0)`` needs a tolerance in floating point; a relative one makes γ independent of
the energy's scale. Eigenvalues within ``±τ`` count as zero, not as negative, so
``α + γ ≤ 1`` and the rest are positive.

Two methods:

* ``dense`` (small systems): the full ``[P, P]`` Hessian by ``torch.func``
  (``functional_call`` + ``jacfwd(jacrev(U))``) in float64, symmetrised, and every
  eigenvalue by ``torch.linalg.eigvalsh``. Memory ``8 P²`` bytes and ``P`` forward-mode
  passes, so it refuses more than ``max_parameters`` parameters.
* ``lanczos`` (large systems): only Hessian-vector products ``Hv`` (double backward), run
  through ``m`` steps of the Lanczos algorithm (full re-orthogonalisation) from ``probes``
  random Rademacher vectors — stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017;
  Ghorbani, Krishnan & Xiao 2019). Each probe ``v`` gives a Gauss quadrature of its
  spectral measure: nodes ``θ_k`` (Ritz values, eigenvalues of the tridiagonal matrix
  ``T``) with weights ``w_k = (e_1ᵀ u_k)²``. The density
  ``φ(λ) ≈ (1/probes) Σ_probes Σ_k w_k δ(λ - θ_k)`` has ``E[vᵀ f(H) v] = tr f(H)/P``, so α
  and γ are the weight of the nodes below ``-τ`` and within ``±τ`` (unbiased when
  ``m ≥ P``; with ``m < P`` the nodes resolve only well-separated parts of the spectrum,
  so γ counts a cluster of small eigenvalues only once it is narrower than τ — a looser
  ``tol`` suits it). The extreme Ritz values converge first: they estimate ``λ_min`` and
  ``λ_max`` from inside the spectrum.

The observables ``hessian_alpha``, ``hessian_gamma``, ``hessian_min_eigenvalue``,
``hessian_max_eigenvalue``, ``hessian_energy`` (scalars), ``hessian_spectrum`` and
``hessian_density`` (vectors) share one computation per step and option set.

They stay in the engine because they are a generic mechanism: they differentiate the
energy of any :class:`~particlesim.core.System` with respect to whatever parameters it
has, whatever its model, activation or potentials (Milletari's plugin is one user).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from particlesim.core.observables import Observable
from particlesim.errors import OptionError

if TYPE_CHECKING:
    from particlesim.core.losses import Loss
    from particlesim.core.simulation import Simulation
    from particlesim.core.system import System

Method = Literal["dense", "lanczos"]
Split = Literal["train", "val", "test"]

#: Default largest parameter count of the dense method (a 32 MB float64 matrix).
DEFAULT_MAX_PARAMETERS = 2000


# --------------------------------------------------------------------------- the energy


class _Energy(nn.Module):
    """``U(θ) = loss(system(x), y) (+ Σ_p c_p E_p)`` as a module, so ``functional_call`` sees θ."""

    def __init__(self, system: System, loss: Loss, include_potentials: bool) -> None:
        super().__init__()
        self.system = system
        self.loss = loss
        self.include_potentials = include_potentials

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        energy = self.loss(self.system(x), y)
        if self.include_potentials and len(self.system.potentials):
            energy = energy + self.system.potential_energy()
        return energy


@dataclass
class EnergyFunction:
    """The energy as a function of a flat parameter vector ``θ [P]`` (float64).

    ``names``/``shapes`` say which parameters ``θ`` holds, in order; every other
    parameter and buffer keeps its current value. Built by :func:`energy_function`.
    """

    module: _Energy
    x: Tensor
    y: Tensor
    names: list[str]
    shapes: list[torch.Size]
    theta: Tensor

    @property
    def size(self) -> int:
        """P, the number of parameters the Hessian is taken over."""
        return int(self.theta.numel())

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """``{"system.<name>": view}`` of a flat ``θ`` (the keys ``functional_call`` wants)."""
        out: dict[str, Tensor] = {}
        start = 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            count = math.prod(shape)
            out[f"system.{name}"] = theta[start : start + count].view(shape)
            start += count
        return out

    def __call__(self, theta: Tensor) -> Tensor:
        """``U(θ)``, a 0-d float64 tensor."""
        return torch.func.functional_call(self.module, self.unflatten(theta), (self.x, self.y))

    def value(self) -> float:
        """``U`` at the current parameters."""
        with torch.no_grad():
            return float(self(self.theta))

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """``∇U(θ) [P]`` (by reverse mode)."""
        return torch.func.grad(self)(self.theta if theta is None else theta)

    def hvp(self, vector: Tensor) -> Tensor:
        """``H v [P]`` at the current parameters, by double backward (no ``[P, P]`` matrix)."""
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self(theta), theta, create_graph=True)
            (product,) = torch.autograd.grad(grad, theta, grad_outputs=vector)
        return product.detach()

    def dense(self) -> Tensor:
        """The symmetric ``[P, P]`` Hessian at the current parameters.

        ``torch.func.hessian`` (forward-over-reverse); where an operation has no
        forward-mode derivative, the columns are Hessian-vector products instead.
        """
        try:
            with warnings.catch_warnings():  # torch's forward-mode set-up, once per process
                warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
                hessian = torch.func.hessian(self)(self.theta)
        except (NotImplementedError, RuntimeError):
            eye = torch.eye(self.size, dtype=self.theta.dtype, device=self.theta.device)
            hessian = torch.stack([self.hvp(column) for column in eye], dim=1)
        return 0.5 * (hessian + hessian.T)


def select_parameters(named: dict[str, nn.Parameter], patterns: Sequence[str] | None) -> list[str]:
    """Names of the learnable parameters matching any glob pattern (all when ``None``).

    Names are those of ``System.named_parameters()`` (``interactions.0.weight``,
    ``groups.hidden1.bias``, ``activations.hidden1.beta``, …); a pattern that matches
    nothing is an :class:`~particlesim.errors.OptionError` listing the names.
    """
    names = [name for name, p in named.items() if p.requires_grad]
    if patterns is None:
        return names
    chosen: list[str] = []
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise OptionError(
                "parameters",
                f"{pattern!r} matches no learnable parameter; names: {', '.join(names)}",
            )
        chosen.extend(hit for hit in hits if hit not in chosen)
    return [name for name in names if name in chosen]  # keep the system's order


def energy_function(
    system: System,
    loss: Loss,
    x: Tensor,
    y: Tensor,
    *,
    parameters: Sequence[str] | None = None,
    include_potentials: bool = True,
    dtype: torch.dtype = torch.float64,
) -> EnergyFunction:
    """The energy of ``system`` on the batch ``(x, y)`` as a function of its parameters.

    Works on a float64 copy of the system, so the caller's system and its gradients are
    untouched. ``parameters`` are glob patterns (see :func:`select_parameters`).

    Example:
        >>> import torch
        >>> from particlesim.core.group import ParticleGroup
        >>> from particlesim.core.interactions import DenseInteraction
        >>> from particlesim.core.losses import MeanSquaredError
        >>> from particlesim.core.system import System
        >>> g = torch.Generator().manual_seed(0)
        >>> fixed = {"generator": g, "charge_channels": 0, "frozen": ["position"]}
        >>> a = ParticleGroup.create("a", 2, 1, **fixed)
        >>> b = ParticleGroup.create("b", 1, 1, **fixed)
        >>> system = System([a, b], [DenseInteraction(a, b, generator=g)])
        >>> energy = energy_function(system, MeanSquaredError(), torch.eye(2), torch.zeros(2))
        >>> energy.dense()  # U = mean_b (w·x_b)², H = 2·mean_b x_b x_bᵀ = I
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    model = copy.deepcopy(system).to(dtype)
    model.train(system.training)
    for parameter in model.parameters():
        parameter.grad = None
    module = _Energy(model, loss, include_potentials)
    named = dict(model.named_parameters())
    names = select_parameters(named, parameters)
    if not names:
        raise OptionError("parameters", "the system has no learnable parameters")
    theta = torch.cat([named[name].detach().reshape(-1) for name in names]).clone()
    device = theta.device
    x = x.to(device, dtype)
    y = y.to(device)
    if y.is_floating_point():
        y = y.to(dtype)
    return EnergyFunction(module, x, y, names, [named[n].shape for n in names], theta)


# --------------------------------------------------------------------------- spectra


@dataclass(frozen=True)
class HessianSpectrum:
    """Eigenvalues (or quadrature nodes) of a Hessian with their weights, and its indices.

    ``nodes`` and ``weights`` have one row per probe: the dense method has one row of all
    ``P`` eigenvalues (ascending) with weights ``1/P``; stochastic Lanczos quadrature has
    ``[probes, m]`` Ritz values and Gauss weights (NaN nodes with weight 0 where a probe's
    Lanczos run stopped early on an invariant subspace). All weights sum to 1.

    Attributes:
        method: ``"dense"`` or ``"lanczos"``.
        parameters: P.
        nodes: ``[R, K]`` float64.
        weights: ``[R, K]`` float64, summing to 1 over all rows.
        tol: relative zero tolerance (see the module docstring).
        energy: ``U`` at the point where the Hessian was taken.
    """

    method: str
    parameters: int
    nodes: Tensor
    weights: Tensor
    tol: float
    energy: float = float("nan")

    @property
    def scale(self) -> float:
        """``max |λ|`` over the nodes (0 for a zero Hessian)."""
        finite = self.nodes[torch.isfinite(self.nodes)]
        return float(finite.abs().max()) if finite.numel() else 0.0

    @property
    def threshold(self) -> float:
        """``τ = tol · max |λ|``: eigenvalues within ``±τ`` count as zero."""
        return self.tol * self.scale

    def _mass(self, mask: Tensor) -> float:
        return float((self.weights * mask).sum())

    @property
    def alpha(self) -> float:
        """Index α: fraction of eigenvalues below ``-τ`` (descent directions)."""
        return self._mass(self.nodes < -self.threshold)

    @property
    def gamma(self) -> float:
        """Index γ: fraction of eigenvalues with ``|λ| ≤ τ`` (flat directions)."""
        return self._mass(self.nodes.abs() <= self.threshold)

    @property
    def min(self) -> float:
        """The smallest eigenvalue (Lanczos: the smallest Ritz value, an upper bound)."""
        return float(self.nodes[torch.isfinite(self.nodes)].min())

    @property
    def max(self) -> float:
        """The largest eigenvalue (Lanczos: the largest Ritz value, a lower bound)."""
        return float(self.nodes[torch.isfinite(self.nodes)].max())

    def eigenvalues(self) -> Tensor:
        """All nodes, flattened and sorted ascending (NaN padding last)."""
        flat = self.nodes.reshape(-1)
        finite = torch.sort(flat[torch.isfinite(flat)]).values
        padding = flat.new_full((flat.numel() - finite.numel(),), math.nan)
        return torch.cat([finite, padding])

    def density(self, bins: int = 50) -> Tensor:
        """Fraction of the spectrum in ``bins`` equal bins of ``λ / max|λ|`` over ``[-1, 1]``.

        A dimensionless histogram (sums to 1) comparable across steps; ``max|λ|`` is
        :attr:`scale`. All mass sits in the middle bin when the Hessian is zero.
        """
        scale = self.scale or 1.0
        finite = torch.isfinite(self.nodes)
        relative = (self.nodes[finite] / scale).clamp(-1.0, 1.0)
        index = ((relative + 1.0) * 0.5 * bins).floor().clamp(0, bins - 1).long()
        histogram = torch.zeros(bins, dtype=torch.float64)
        histogram.index_add_(0, index.cpu(), self.weights[finite].cpu().double())
        return histogram

    def smoothed_density(self, grid: Tensor, width: float) -> Tensor:
        """``φ(λ) = Σ_k w_k N(λ; θ_k, width²)`` on ``grid`` (Gaussian-broadened, mass 1)."""
        finite = torch.isfinite(self.nodes)
        nodes = self.nodes[finite].cpu().double()
        weights = self.weights[finite].cpu().double()
        grid = grid.double().reshape(-1, 1)
        kernel = torch.exp(-0.5 * ((grid - nodes) / width) ** 2) / (width * math.sqrt(2 * math.pi))
        return (kernel * weights).sum(-1)


def check_tolerance(tol: float) -> float:
    """``tol`` if it lies in (0, 1), else an :class:`OptionError`."""
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise OptionError("tol", f"must be a number in (0, 1) (relative to max |λ|), got {tol!r}")
    return float(tol)


def dense_spectrum(
    hessian: Tensor, *, tol: float = 1e-6, energy: float = math.nan
) -> HessianSpectrum:
    """Every eigenvalue of a symmetric ``[P, P]`` matrix (float64 ``eigvalsh``) and its indices.

    Example:
        >>> import torch
        >>> spectrum = dense_spectrum(torch.diag(torch.tensor([-2.0, 0.0, 0.0, 1.0, 3.0])))
        >>> spectrum.alpha, spectrum.gamma, spectrum.min, spectrum.max
        (0.2, 0.4, -2.0, 3.0)
    """
    tol = check_tolerance(tol)
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1] or hessian.shape[0] == 0:
        raise OptionError("hessian", f"expected a square [P, P] matrix, got {list(hessian.shape)}")
    matrix = hessian.detach().double()
    eigenvalues = torch.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    size = eigenvalues.numel()
    weights = torch.full_like(eigenvalues, 1.0 / size)
    return HessianSpectrum("dense", size, eigenvalues[None], weights[None], tol, energy)


def lanczos(matvec: Callable[[Tensor], Tensor], start: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Lanczos tridiagonalisation with full re-orthogonalisation.

    Builds an orthonormal basis ``q_1 = start/|start|, …, q_k`` of the Krylov space of
    ``A`` (given by ``matvec``) and ``T = Qᵀ A Q``, tridiagonal with diagonal ``a`` and
    off-diagonal ``b``. Every new vector is orthogonalised against the whole basis (twice,
    "twice is enough"), so no spurious copies of converged eigenvalues appear. Stops
    early when the Krylov space is invariant (``b_k ≤ 1e-12 · |a|``-scale).

    Returns:
        ``(a [k], b [k-1])``, ``k ≤ min(steps, P)``.
    """
    size = start.numel()
    steps = min(int(steps), size)
    q = start / start.norm()
    basis = [q]
    diagonal: list[Tensor] = []
    off: list[Tensor] = []
    scale = 0.0
    for j in range(steps):
        w = matvec(basis[j])
        a = torch.dot(basis[j], w)
        diagonal.append(a)
        w = w - a * basis[j] - (off[-1] * basis[j - 1] if j > 0 else 0.0)
        stack = torch.stack(basis, dim=1)
        for _ in range(2):
            w = w - stack @ (stack.T @ w)
        b = w.norm()
        scale = max(scale, float(a.abs()), float(b))
        if j == steps - 1 or float(b) <= 1e-12 * max(scale, 1e-300):
            break
        off.append(b)
        basis.append(w / b)
    return torch.stack(diagonal), (torch.stack(off) if off else start.new_zeros(0))


def gauss_quadrature(diagonal: Tensor, off: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes (eigenvalues of ``T``) and weights (squared first components) of a Lanczos run."""
    k = diagonal.numel()
    tridiagonal = torch.diag(diagonal)
    if k > 1:
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(tridiagonal)
    return nodes, vectors[0] ** 2


def lanczos_spectrum(
    matvec: Callable[[Tensor], Tensor],
    size: int,
    *,
    steps: int = 30,
    probes: int = 4,
    tol: float = 1e-6,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    energy: float = math.nan,
) -> HessianSpectrum:
    """Stochastic Lanczos quadrature of a symmetric operator ``matvec`` on ``R^size``.

    ``probes`` Rademacher start vectors (drawn from ``generator``), ``steps`` Lanczos
    steps each (at most ``size``). See the module docstring for what the result means.

    Example:
        >>> import torch
        >>> matrix = torch.diag(torch.tensor([-1.0, 2.0, 5.0], dtype=torch.float64))
        >>> spectrum = lanczos_spectrum(lambda v: matrix @ v, 3, steps=3, probes=2)
        >>> round(spectrum.min, 6), round(spectrum.max, 6)
        (-1.0, 5.0)
    """
    tol = check_tolerance(tol)
    if steps < 1:
        raise OptionError("lanczos_steps", f"must be a positive integer, got {steps}")
    if probes < 1:
        raise OptionError("probes", f"must be a positive integer, got {probes}")
    generator = generator or torch.Generator().manual_seed(0)
    width = min(int(steps), int(size))
    nodes = torch.full((probes, width), math.nan, dtype=torch.float64)
    weights = torch.zeros((probes, width), dtype=torch.float64)
    for probe in range(probes):
        signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int64) * 2 - 1
        start = signs.to(device=device, dtype=dtype)
        diagonal, off = lanczos(matvec, start, width)
        theta, weight = gauss_quadrature(diagonal.double().cpu(), off.double().cpu())
        nodes[probe, : theta.numel()] = theta
        weights[probe, : weight.numel()] = weight / probes
    return HessianSpectrum("lanczos", int(size), nodes, weights, tol, energy)


# --------------------------------------------------------------------------- one call


def hessian_spectrum(
    energy: EnergyFunction,
    *,
    method: Method = "dense",
    tol: float = 1e-6,
    lanczos_steps: int = 30,
    probes: int = 4,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    seed: int = 0,
) -> HessianSpectrum:
    """The spectrum of ``energy``'s Hessian by the chosen method (see the module docstring).

    The dense method refuses more than ``max_parameters`` parameters with an
    :class:`OptionError` that suggests ``method = "lanczos"``.
    """
    tol = check_tolerance(tol)
    size = energy.size
    value = energy.value()
    if method == "dense":
        if size > max_parameters:
            gigabytes = 8 * size**2 / 1e9
            raise OptionError(
                "method",
                f"the dense Hessian of {size} parameters is a [{size}, {size}] float64 matrix "
                f"({gigabytes:.3g} GB), more than max_parameters = {max_parameters} allows; "
                'use method = "lanczos" (Hessian-vector products, stochastic Lanczos '
                "quadrature), select fewer parameters, or raise max_parameters",
            )
        return dense_spectrum(energy.dense(), tol=tol, energy=value)
    if method == "lanczos":
        return lanczos_spectrum(
            energy.hvp,
            size,
            steps=lanczos_steps,
            probes=probes,
            tol=tol,
            generator=torch.Generator().manual_seed(int(seed)),
            dtype=energy.theta.dtype,
            device=energy.theta.device,
            energy=value,
        )
    raise OptionError("method", f"expected 'dense' or 'lanczos', got {method!r}")


# --------------------------------------------------------------------------- observables


#: Per simulation: ``(step, options) -> spectrum`` of the current step only.
_SHARED: weakref.WeakKeyDictionary[Any, tuple[int, dict[tuple, HessianSpectrum]]] = (
    weakref.WeakKeyDictionary()
)


class HessianObservable(Observable):
    """Base of the Hessian observables: options, and one shared computation per step.

    Every ``hessian_*`` observable with the same options at the same step reuses one
    spectrum, so recording α, γ and the extreme eigenvalues costs one Hessian.

    Args:
        method: ``"dense"`` (every eigenvalue, ``P ≤ max_parameters``) or ``"lanczos"``
            (stochastic Lanczos quadrature from Hessian-vector products).
        samples: evaluate the energy on the first ``samples`` rows of ``split``
            (``None``: all of them).
        split: ``"train"``, ``"val"`` or ``"test"``.
        parameters: glob patterns of parameter names (``System.named_parameters()``,
            e.g. ``["interactions.*", "activations.*"]``); ``None``: all learnable ones.
        include_potentials: take the Hessian of ``L + Σ_p c_p E_p`` (the energy the
            integrator descends) rather than of the data loss ``L`` alone.
        tol: zero tolerance relative to ``max |λ|`` (default ``1e-6``).
        lanczos_steps: Lanczos steps per probe (``lanczos`` only).
        probes: random start vectors (``lanczos`` only).
        max_parameters: the dense method's limit on ``P``.
        seed: seeds the probes.
    """

    category: ClassVar[Any] = "scalar"

    def __init__(
        self,
        *,
        method: Method = "dense",
        samples: int | None = None,
        split: Split = "train",
        parameters: list[str] | None = None,
        include_potentials: bool = True,
        tol: float = 1e-6,
        lanczos_steps: int = 30,
        probes: int = 4,
        max_parameters: int = DEFAULT_MAX_PARAMETERS,
        seed: int = 0,
    ) -> None:
        if method not in ("dense", "lanczos"):
            raise OptionError("method", f"expected 'dense' or 'lanczos', got {method!r}")
        if split not in ("train", "val", "test"):
            raise OptionError("split", f"expected 'train', 'val' or 'test', got {split!r}")
        for key, value in (
            ("samples", samples),
            ("lanczos_steps", lanczos_steps),
            ("probes", probes),
            ("max_parameters", max_parameters),
        ):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise OptionError(key, f"must be a positive integer, got {value!r}")
        if parameters is not None and not parameters:
            raise OptionError("parameters", "give at least one pattern, or leave it out for all")
        self.method: Method = method
        self.samples = samples
        self.split: Split = split
        self.parameters = None if parameters is None else list(parameters)
        self.include_potentials = include_potentials
        self.tol = check_tolerance(tol)
        self.lanczos_steps = lanczos_steps
        self.probes = probes
        self.max_parameters = max_parameters
        self.seed = seed

    def options_key(self) -> tuple:
        """What makes two Hessian observables share a computation."""
        return (
            self.method,
            self.samples,
            self.split,
            tuple(self.parameters or ()),
            self.include_potentials,
            self.tol,
            self.lanczos_steps,
            self.probes,
            self.max_parameters,
            self.seed,
        )

    def spectrum(self, simulation: Simulation) -> HessianSpectrum:
        """The spectrum at the simulation's current step (computed once per step and options)."""
        step, cache = _SHARED.get(simulation, (-1, {}))
        if step != simulation.step:
            cache = {}
            _SHARED[simulation] = (simulation.step, cache)
        key = self.options_key()
        if key not in cache:
            cache[key] = self._compute(simulation)
        return cache[key]

    def _compute(self, simulation: Simulation) -> HessianSpectrum:
        x = getattr(simulation.data, f"{self.split}_x")
        y = getattr(simulation.data, f"{self.split}_y")
        if self.samples is not None:
            x, y = x[: self.samples], y[: self.samples]
        if x.shape[0] == 0:
            raise OptionError(
                "split", f"{self.name}: the {self.split} split is empty; choose another split"
            )
        try:
            energy = energy_function(
                simulation.system,
                simulation.loss,
                x,
                y,
                parameters=self.parameters,
                include_potentials=self.include_potentials,
            )
            return hessian_spectrum(
                energy,
                method=self.method,
                tol=self.tol,
                lanczos_steps=self.lanczos_steps,
                probes=self.probes,
                max_parameters=self.max_parameters,
                seed=self.seed,
            )
        except OptionError as exc:
            raise OptionError(exc.key, f"{self.name}: {exc.detail}") from None

    def compute(self, simulation: Simulation) -> Tensor | float:
        raise NotImplementedError  # pragma: no cover


def _scalar_observable(
    name: str, attribute: str, description: str, unit: str = ""
) -> type[HessianObservable]:
    def compute(self: HessianObservable, simulation: Simulation) -> float:
        return float(getattr(self.spectrum(simulation), attribute))

    return type(
        "Hessian" + "".join(part.capitalize() for part in name.split("_")[1:]),
        (HessianObservable,),
        {
            "name": name,
            "unit": unit,
            "description": description,
            "compute": compute,
            "__doc__": f"{description} (shape ``[]``); options: see :class:`HessianObservable`.",
            "__module__": __name__,
        },
    )


HessianAlpha = _scalar_observable(
    "hessian_alpha", "alpha", "index α: fraction of Hessian eigenvalues below -tol·max|λ|"
)
HessianGamma = _scalar_observable(
    "hessian_gamma", "gamma", "index γ: fraction of Hessian eigenvalues with |λ| ≤ tol·max|λ|"
)
HessianMinEigenvalue = _scalar_observable(
    "hessian_min_eigenvalue", "min", "smallest Hessian eigenvalue (Lanczos: smallest Ritz value)"
)
HessianMaxEigenvalue = _scalar_observable(
    "hessian_max_eigenvalue", "max", "largest Hessian eigenvalue (Lanczos: largest Ritz value)"
)
HessianEnergy = _scalar_observable(
    "hessian_energy", "energy", "energy U on the evaluation batch where the Hessian is taken"
)


class HessianSpectrumObservable(HessianObservable):
    """Every Hessian eigenvalue, ascending: ``[P]`` (dense) or the ``[probes·m]`` Ritz values.

    Lanczos runs that stop early leave NaN at the end. Options: see
    :class:`HessianObservable`.
    """

    name = "hessian_spectrum"
    category = "particle"  # not a scalar: writers take its shape from the first value
    description = "Hessian eigenvalues, ascending (Lanczos: Ritz values, NaN-padded)"

    def compute(self, simulation: Simulation) -> Tensor:
        return self.spectrum(simulation).eigenvalues()


class HessianDensity(HessianObservable):
    """Spectral density: fraction of eigenvalues per bin of ``λ/max|λ|`` on ``[-1, 1]``, ``[bins]``.

    Dimensionless, so frames compare; ``max|λ|`` is ``max(|hessian_min_eigenvalue|,
    |hessian_max_eigenvalue|)``. With ``lanczos`` the mass is the quadrature weight.

    Args:
        bins: number of equal bins (default 41, so that 0 sits in the middle bin).
        **options: see :class:`HessianObservable`.
    """

    name = "hessian_density"
    category = "particle"  # not a scalar: writers take its shape from the first value
    description = "fraction of Hessian eigenvalues per bin of λ/max|λ| over [-1, 1]"

    def __init__(
        self,
        *,
        bins: int = 41,
        method: Method = "dense",
        samples: int | None = None,
        split: Split = "train",
        parameters: list[str] | None = None,
        include_potentials: bool = True,
        tol: float = 1e-6,
        lanczos_steps: int = 30,
        probes: int = 4,
        max_parameters: int = DEFAULT_MAX_PARAMETERS,
        seed: int = 0,
    ) -> None:
        super().__init__(
            method=method,
            samples=samples,
            split=split,
            parameters=parameters,
            include_potentials=include_potentials,
            tol=tol,
            lanczos_steps=lanczos_steps,
            probes=probes,
            max_parameters=max_parameters,
            seed=seed,
        )
        if isinstance(bins, bool) or bins < 1:
            raise OptionError("bins", f"must be a positive integer, got {bins!r}")
        self.bins = bins

    def compute(self, simulation: Simulation) -> Tensor:
        return self.spectrum(simulation).density(self.bins)


HESSIAN_OBSERVABLES: tuple[type[HessianObservable], ...] = (
    HessianAlpha,
    HessianGamma,
    HessianMinEigenvalue,
    HessianMaxEigenvalue,
    HessianEnergy,
    HessianSpectrumObservable,
    HessianDensity,
)
