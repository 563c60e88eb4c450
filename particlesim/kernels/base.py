"""Kernels: pairwise functions of two position sets, ``k(r_h, r_j) -> [M, N]``.

A :class:`RadialKernel` is a pure function of the scaled squared distance
``u = |r_h - r_j|² / σ²`` (its *profile* ``f(u)``) together with the closed
form of ``df/du``. Every execution path (materialised, chunked, fused) wraps
the same two functions, and the tests compare each path against them.

Widths: ``width`` may be one number or a sequence of ``C`` numbers. With ``C``
widths the kernel has ``C`` channels and returns ``[C, M, N]``; a group whose
charge is ``[M, C]`` then mixes the channels (``W = Σ_c q_c · k_c``), which lets
one particle's outgoing weights change sign with distance.

Cutoffs: a radial kernel may be truncated at a distance ``cutoff`` (absolute, not scaled
by σ). The truncated kernel is ``f(r²/σ²) · S(r²)`` with the XPLOR switching function of
CHARMM and HOOMD-blue (:func:`xplor_switch`), which is 1 up to ``r_on = cutoff −
switch_width``, 0 from ``cutoff`` on, and C¹ in between, so forces (position gradients)
stay continuous. Every execution path evaluates exactly this function; the chunked and
fused paths additionally skip pairs of particle blocks that lie farther apart than the
cutoff (see :mod:`particlesim.kernels.neighbours`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from particlesim.errors import PluginError


def xplor_switch(r2: Tensor, r_on: float, r_cut: float) -> Tensor:
    """XPLOR switching function ``S`` as a function of ``r²`` (CHARMM; HOOMD-blue ``xplor``).

    ``S = 1`` for ``r ≤ r_on``, ``S = 0`` for ``r ≥ r_cut`` and in between::

        S = (r_c² − r²)² (r_c² + 2r² − 3r_on²) / (r_c² − r_on²)³

    ``S`` and ``dS/dr`` are continuous everywhere (``dS/dr = 0`` at both ends), so a kernel
    multiplied by ``S`` has continuous gradients. Needs ``0 ≤ r_on < r_cut``.
    """
    a, b = r_cut * r_cut, r_on * r_on
    inside = torch.clamp(r2, min=b, max=a)  # S is 1 below r_on and 0 above r_c
    return (a - inside) ** 2 * (a + 2.0 * inside - 3.0 * b) / (a - b) ** 3


def xplor_switch_derivative(r2: Tensor, r_on: float, r_cut: float) -> Tensor:
    """``dS/d(r²) = −6 (r_c² − r²)(r² − r_on²) / (r_c² − r_on²)³`` inside, 0 outside."""
    a, b = r_cut * r_cut, r_on * r_on
    inside = torch.clamp(r2, min=b, max=a)  # both factors vanish at the ends
    return -6.0 * (a - inside) * (inside - b) / (a - b) ** 3


def squared_distance(target: Tensor, source: Tensor) -> Tensor:
    """``|r_h - r_j|²`` for ``target [M, D]`` and ``source [N, D]`` → ``[M, N]``.

    Computed from differences (not the ``a² + b² - 2ab`` expansion), so it is
    exact to rounding, never negative, and exactly 0 for coincident particles.
    """
    diff = target[:, None, :] - source[None, :, :]
    return (diff * diff).sum(-1)


class KernelError(PluginError, ValueError):
    """A kernel broke its contract: an output of the wrong shape, or a profile that is not finite.

    A :class:`~particlesim.errors.PluginError` (kernels usually come from plugins), so the CLI
    prints it as one line; also a ``ValueError`` for code that catches bad values generically.
    """


def describe_kernel(kernel: object) -> str:
    """``"'name' (Class in /path/file.py)"``: how errors name a kernel and where it is defined."""
    cls = kernel if isinstance(kernel, type) else type(kernel)
    name = getattr(cls, "name", "") or cls.__name__
    try:
        where = inspect.getsourcefile(cls) or cls.__module__
    except TypeError:  # classes defined in exec'd code have no file
        where = cls.__module__
    return f"{name!r} ({cls.__qualname__} in {where})"


class Kernel(nn.Module):
    """Base class of every kernel. Subclasses set ``name`` and implement :meth:`forward`.

    ``forward(target [M, D], source [N, D]) -> [M, N]`` (or ``[C, M, N]`` for
    ``C`` channels). Kernels that are not radial (dot-product, features) derive
    from this class directly; gradients then come from autograd.
    """

    name: ClassVar[str] = ""
    channels: int = 1
    #: Distance beyond which the kernel is exactly 0 (None: no cutoff). Paths that skip far
    #: pairs of blocks rely on it, so a kernel that sets it must honour it in ``forward``.
    cutoff: float | None = None

    def forward(self, target: Tensor, source: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class RadialKernel(Kernel):
    """``k(r_h, r_j) = f(|r_h - r_j|² / σ²)``; subclasses give ``profile`` and its derivative.

    Args:
        width: σ, one positive finite number or ``C`` of them (channels). Default 1.
        learnable_width: make σ a trained parameter (stored as ``log σ`` so it
            stays positive).
        cutoff: truncate the kernel at this distance ``|r_h − r_j|`` (absolute units, not
            scaled by σ); None (default) keeps it untruncated. The truncated kernel is
            ``f(u) · S(r²)`` with the XPLOR switch :func:`xplor_switch`.
        switch_width: width of the switching region, ``r_on = cutoff − switch_width``, in
            ``(0, cutoff]``; default ``cutoff / 5``. Only with ``cutoff``.
    """

    def __init__(
        self,
        width: float | Sequence[float] = 1.0,
        learnable_width: bool = False,
        cutoff: float | None = None,
        switch_width: float | None = None,
    ) -> None:
        super().__init__()
        self.cutoff, self.switch_on = _check_cutoff(self.name, cutoff, switch_width)
        try:
            widths = torch.as_tensor(width, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"kernel {self.name!r}: width must be numbers, got {width!r}") from exc
        if widths.ndim == 0:  # a plain, numpy or 0-d tensor scalar
            widths = widths.reshape(1)
        # ``not (w > 0)`` also rejects NaN; infinite widths would make every u = 0.
        if (
            widths.ndim != 1
            or widths.numel() == 0
            or not bool(((widths > 0) & torch.isfinite(widths)).all())
        ):
            raise ValueError(
                f"kernel {self.name!r}: width must be one positive finite number or a non-empty "
                f"flat sequence of them, got {width!r}"
            )
        log_width = widths.log().to(torch.get_default_dtype())
        if learnable_width:
            self.log_width = nn.Parameter(log_width)
        else:
            self.register_buffer("log_width", log_width)
        self.channels = int(widths.numel())

    @property
    def width(self) -> Tensor:
        """σ per channel, shape ``[C]``."""
        return self.log_width.exp()

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        """``f(u)`` for the scaled squared distance ``u = r²/σ² ≥ 0``."""
        raise NotImplementedError

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        """``df/du`` in closed form (used by the chunked and fused paths)."""
        raise NotImplementedError

    @classmethod
    def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
        """``df/du`` given ``value = f(u)``, which the ``matmul`` path has at hand (its forward
        makes the derivative right after the kernel, block by block, where the positions
        need gradients; its general backward from the kernel it kept).

        Optional: the default calls :meth:`profile_derivative`. Override it where the
        derivative is cheaper from the value than from ``u`` alone (the Gaussian's
        ``f' = −f``, the Cauchy's ``f' = −f²``, a Student-t's ``f' = −(ν+1)/(2ν)·f/(1 + u/ν)``
        instead of a second general power); on CPU a general ``pow`` costs ~8 elementwise
        passes. Must agree with :meth:`profile_derivative` and leave ``value`` as it is
        (both checked when plugins load).
        """
        return cls.profile_derivative(u)

    #: Optional: ``f(u)`` of one float, a ``staticmethod`` written with ``+ − × ÷``,
    #: comparisons, ``a if c else b``, number literals and module constants, and the
    #: functions of :mod:`particlesim.kernels.scalar_math`. The CPU matmul path compiles it
    #: with Numba into its fused loops for the common layer, where the kernel then costs what
    #: the built-in Gaussian does instead of a tensor operation per step of the profile (a
    #: Student-t: 1.26× instead of 1.52× ``nn.Linear`` at 512 × 2048 × 2048, 2 threads).
    #: Must agree with :meth:`profile` (checked when plugins load). Give both or neither.
    scalar_profile: Callable[[float], float] | None = None

    #: Optional, with :attr:`scalar_profile`: ``df/du`` of one float given ``u`` and ``value =
    #: f(u)`` (use whichever is cheaper: the Cauchy's ``−value²``). Must agree with
    #: :meth:`profile_derivative` (checked when plugins load).
    scalar_profile_derivative: Callable[[float, float], float] | None = None

    def scaled(self, r2: Tensor) -> Tensor:
        """``u = r² / σ²`` with a leading channel axis when ``C > 1``."""
        inv = self.width.to(r2.dtype).pow(-2)
        if self.channels == 1:
            return r2 * inv[0]
        return r2.unsqueeze(0) * inv.view(-1, *([1] * r2.ndim))

    def switch(self, r2: Tensor) -> Tensor:
        """The cutoff's switching factor ``S(r²)`` (all ones without a cutoff)."""
        if self.cutoff is None:
            return torch.ones_like(r2)
        return xplor_switch(r2, self.switch_on, self.cutoff)

    def switch_derivative(self, r2: Tensor) -> Tensor:
        """``dS/d(r²)`` of :meth:`switch` (all zeros without a cutoff)."""
        if self.cutoff is None:
            return torch.zeros_like(r2)
        return xplor_switch_derivative(r2, self.switch_on, self.cutoff)

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        r2 = squared_distance(target, source)
        k = self.profile(self.scaled(r2))
        if self.cutoff is None:
            return k
        return k * xplor_switch(r2, self.switch_on, self.cutoff)

    def extra_repr(self) -> str:
        text = f"width={[round(w, 6) for w in self.width.tolist()]}"
        if self.cutoff is not None:
            text += f", cutoff={self.cutoff:g}, switch_width={self.cutoff - self.switch_on:g}"
        return text


def _check_cutoff(
    name: str, cutoff: float | None, switch_width: float | None
) -> tuple[float | None, float]:
    """Validate a kernel's cutoff options; return ``(cutoff, r_on)``."""
    if cutoff is None:
        if switch_width is not None:
            raise ValueError(f"kernel {name!r}: switch_width needs a cutoff, got no cutoff")
        return None, 0.0
    if (
        isinstance(cutoff, bool)
        or not isinstance(cutoff, int | float)
        or not (math.isfinite(cutoff) and cutoff > 0)
    ):
        raise ValueError(
            f"kernel {name!r}: cutoff must be a positive finite distance, got {cutoff!r}"
        )
    cutoff = float(cutoff)
    width = cutoff / 5.0 if switch_width is None else switch_width
    if isinstance(width, bool) or not isinstance(width, int | float) or not (0 < width <= cutoff):
        raise ValueError(
            f"kernel {name!r}: switch_width must be in (0, cutoff = {cutoff:g}], "
            f"got {switch_width!r}"
        )
    return cutoff, cutoff - float(width)


class GaussianKernel(RadialKernel):
    """Gaussian ``k = exp(-|r|²/σ²)``; at σ = 1 this is Lange (2015) eq. 10."""

    name = "gaussian"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return torch.exp(-u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -torch.exp(-u)

    @classmethod
    def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
        return -value


class CauchyKernel(RadialKernel):
    """Cauchy (falloff) ``k = 1/(1 + |r|²/σ²)``; Shader's positional falloff at σ = 1."""

    name = "cauchy"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        return 1.0 / (1.0 + u)

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        return -1.0 / (1.0 + u) ** 2

    @classmethod
    def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
        return -(value * value)

    @staticmethod
    def scalar_profile(u: float) -> float:
        return 1.0 / (1.0 + u)

    @staticmethod
    def scalar_profile_derivative(u: float, value: float) -> float:
        return -(value * value)


class ExponentialKernel(RadialKernel):
    """Exponential ``k = exp(-|r|/λ)`` (``width`` is λ).

    ``|r|`` uses a masked square root, so coincident particles give a finite
    value and a zero (sub)gradient instead of NaN.
    """

    name = "exponential"

    @staticmethod
    def profile(u: Tensor) -> Tensor:
        positive = u > 0
        safe = torch.where(positive, u, torch.ones_like(u))
        return torch.where(positive, torch.exp(-torch.sqrt(safe)), torch.ones_like(u))

    @staticmethod
    def profile_derivative(u: Tensor) -> Tensor:
        positive = u > 0
        safe = torch.where(positive, u, torch.ones_like(u))
        root = torch.sqrt(safe)
        return torch.where(positive, -torch.exp(-root) / (2.0 * root), torch.zeros_like(u))

    @classmethod
    def profile_derivative_from_value(cls, u: Tensor, value: Tensor) -> Tensor:
        positive = u > 0
        root = torch.where(positive, u, torch.ones_like(u)).sqrt_()
        return torch.where(positive, value / root.mul_(-2.0), torch.zeros_like(u))


BUILTIN_KERNELS: tuple[type[Kernel], ...] = (GaussianKernel, CauchyKernel, ExponentialKernel)


#: Scaled squared distances ``u`` at which a registered radial kernel's profile is checked: 0
#: (coincident particles) up to 25 (five widths apart), as a ``[3, 3]`` tensor so that a
#: profile that is not elementwise (reduces, or assumes one dimension) shows up.
PROFILE_CHECK_U: tuple[float, ...] = (0.0, 1e-3, 0.05, 0.3, 1.0, 2.0, 4.5, 9.0, 25.0)


def kernel_class_problem(factory: object) -> str | None:
    """Why ``factory`` cannot be registered as a kernel, as a clause after "which"; else None.

    The plugin manager calls this for every registered kernel, so that a broken kernel is
    reported naming its plugin when plugins load (``particlesim validate`` included), instead
    of as a wrong gradient or a traceback in the middle of a run. Checks:

    * it is a subclass of :class:`Kernel`;
    * a :class:`RadialKernel` whose ``forward`` is the base class's defines ``profile`` and
      ``profile_derivative`` (the chunked backward uses the latter);
    * both map a float64 ``u`` of shape ``[3, 3]`` (:data:`PROFILE_CHECK_U`) to finite float64
      tensors of the same shape (elementwise; finite at ``u = 0``, where particles coincide);
    * ``profile_derivative`` agrees with autograd's derivative of ``profile`` at every
      ``u > 0`` to ``1e-6 + 1e-4·|f'|`` (a sign or factor slip would make the chunked path
      train differently from the reference path), and autograd's derivative is finite at
      ``u = 0`` (an unmasked ``sqrt(u)`` gives NaN gradients on the reference path where
      two particles coincide, e.g. two groups laid out on the same grid).
    """
    if not (isinstance(factory, type) and issubclass(factory, Kernel)):
        return (
            "is not a subclass of particlesim.kernels.Kernel (derive kernels from Kernel, "
            "or from RadialKernel for a function of distance)"
        )
    if not issubclass(factory, RadialKernel):
        return None
    own_forward = factory.forward is RadialKernel.forward
    functions: dict[str, Callable[[Tensor], object]] = {}
    for attr in ("profile", "profile_derivative"):
        if getattr(factory, attr) is getattr(RadialKernel, attr):
            if not own_forward:
                continue  # a forward of its own need not use the profile
            return f"does not define {attr}(u) (a RadialKernel needs profile and its derivative)"
        function = _profile_function(factory, attr)
        if function is None:
            return None  # an instance method on a class that needs arguments: cannot check
        functions[attr] = function
    u = torch.tensor(PROFILE_CHECK_U, dtype=torch.float64).reshape(3, 3)
    values: dict[str, Tensor] = {}
    for attr, function in functions.items():
        u_in = u.clone().requires_grad_(attr == "profile")
        try:
            with torch.enable_grad():
                out = function(u_in)
        except Exception as exc:
            message = " ".join(str(exc).split())
            return f"raised {type(exc).__name__} in {attr}(u) for u >= 0: {message}"
        problem = _profile_output_problem(attr, out, u)
        if problem is not None:
            return problem
        values[attr] = out
        if attr == "profile":
            values["u"] = u_in
    if "profile" in values and "profile_derivative" in values:
        f, closed = values["profile"], values["profile_derivative"]
        problem = _derivative_problem(values["u"], f, closed)
        if problem is None:
            problem = _from_value_problem(factory, u, f, closed)
        return problem if problem is not None else _scalar_problem(factory, u, f, closed)
    return None


def _close(got: Any, want: Any) -> Any:
    """Where ``got`` is within ``1e-6 + 1e-4·|want|`` of ``want``: the one tolerance of every
    profile check (numbers or tensors alike; NaN is never close)."""
    return abs(got - want) <= 1e-6 + 1e-4 * abs(want)


def _scalar_problem(factory: type, u: Tensor, f: Tensor, closed: Tensor) -> str | None:
    """``scalar_profile`` and ``scalar_profile_derivative`` (both or neither, static
    methods) against ``profile`` and ``profile_derivative``, one float at a time."""
    names = ("scalar_profile", "scalar_profile_derivative")
    given = [getattr(factory, n) is not getattr(RadialKernel, n) for n in names]
    if not any(given):
        return None
    if not all(given):
        missing = names[given.index(False)]
        return f"defines {names[given.index(True)]} without {missing} (give both or neither)"
    for name in names:
        if not isinstance(inspect.getattr_static(factory, name), staticmethod):
            return f"has a {name} that is not a staticmethod (the fused loops compile a function)"
    profile, derivative = (getattr(factory, n) for n in names)
    rows = (t.detach().flatten().tolist() for t in (u, f, closed))
    for at, want, want_prime in zip(*rows, strict=True):
        try:
            value = float(profile(at))
            prime = float(derivative(at, value))
        except Exception as exc:
            message = " ".join(str(exc).split())
            return f"raised {type(exc).__name__} in its scalar profile at u = {at:g}: {message}"
        for name, got, expected in ((names[0], value, want), (names[1], prime, want_prime)):
            if not _close(got, expected):
                return (
                    f"has {name} = {got:.6g} at u = {at:g}, but its tensor form there is "
                    f"{expected:.6g} (the CPU matmul path's fused loops use {name})"
                )
    return None


def _from_value_problem(factory: type, u: Tensor, f: Tensor, closed: Tensor) -> str | None:
    """A ``profile_derivative_from_value`` of the kernel's own against ``profile_derivative``."""
    attr = "profile_derivative_from_value"
    if inspect.getattr_static(factory, attr) is inspect.getattr_static(RadialKernel, attr):
        return None
    function = _profile_function(factory, attr)
    if function is None:
        return None  # an instance method on a class that needs arguments: cannot check
    value = f.detach().clone()
    try:
        out = function(u.clone(), value)
    except Exception as exc:
        message = " ".join(str(exc).split())
        return f"raised {type(exc).__name__} in {attr}(u, value) for u >= 0: {message}"
    if not torch.equal(value, f.detach()):
        return (
            f"changes value in place in {attr}(u, value); it must return a new tensor (the "
            "matmul path keeps the kernel it passes as value)"
        )
    problem = _profile_output_problem(attr, out, u)
    if problem is not None:
        return problem
    wrong = ~_close(out.detach(), closed.detach())
    if not bool(wrong.any()):
        return None
    first = int(wrong.flatten().nonzero()[0])
    at, got, want = (t.flatten()[first].item() for t in (u, out.detach(), closed.detach()))
    return (
        f"has {attr}(u, f(u)) = {got:.6g} at u = {at:g}, but profile_derivative(u) there is "
        f"{want:.6g} (the matmul path's gradients use {attr})"
    )


def _profile_function(factory: type, attr: str) -> Callable[..., object] | None:
    """``factory.<attr>`` as a one-argument function (a static method, or bound to an instance)."""
    static = inspect.getattr_static(factory, attr)
    if isinstance(static, staticmethod | classmethod):
        return getattr(factory, attr)
    try:
        return getattr(factory(), attr)
    except Exception:
        return None


def _profile_output_problem(attr: str, out: object, u: Tensor) -> str | None:
    """Shape, dtype and finiteness of ``profile(u)`` or ``profile_derivative(u)``."""
    if not isinstance(out, Tensor):
        return f"has {attr}(u) returning {type(out).__name__}, not a tensor"
    if out.shape != u.shape:
        return (
            f"has {attr}(u) returning shape {list(out.shape)} for u of shape {list(u.shape)} "
            "(profile and profile_derivative must be elementwise)"
        )
    if out.dtype != u.dtype:
        return f"has {attr}(u) returning {out.dtype} for {u.dtype} u (compute in u's dtype)"
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        where = ", ".join(f"{v:g}" for v in u[bad].tolist())
        values = ", ".join(f"{v:g}" for v in out.detach()[bad].tolist())
        hint = (
            " (mask the square root at u = 0, as ExponentialKernel does)"
            if bool(u[bad].eq(0).all())
            else ""
        )
        return f"has {attr}(u) = {values} at u = {where}; it must be finite for every u >= 0{hint}"
    return None


def _derivative_problem(u: Tensor, f: Tensor, closed: Tensor) -> str | None:
    """Compare ``profile_derivative`` with autograd's ``df/du`` where ``u > 0``."""
    (auto,) = torch.autograd.grad(f.sum(), u, allow_unused=True)
    auto = torch.zeros_like(u) if auto is None else auto
    at_zero = u.detach() == 0
    if not bool(torch.isfinite(auto[at_zero]).all()):
        value = auto[at_zero][~torch.isfinite(auto[at_zero])][0].item()
        return (
            f"has a profile(u) whose autograd derivative at u = 0 is {value:g}: the reference "
            "path's gradients would be NaN where two particles coincide (mask the square root "
            "at u = 0, as ExponentialKernel does)"
        )
    closed = closed.detach()
    compare = (u.detach() > 0) & torch.isfinite(auto)
    wrong = compare & ~_close(closed, auto)
    if not bool(wrong.any()):
        return None
    first = int(wrong.flatten().nonzero()[0])
    at, got, want = (t.flatten()[first].item() for t in (u.detach(), closed, auto))
    return (
        f"has profile_derivative(u) = {got:.6g} at u = {at:g}, but the derivative of profile(u) "
        f"there is {want:.6g} (the chunked path's gradients use profile_derivative)"
    )


def check_inputs(
    kernel: Kernel,
    target_pos: Tensor,
    source_pos: Tensor,
    charge: Tensor | None,
    modulation: Tensor | None,
    x: Tensor | None = None,
    *,
    mixed_precision: bool = False,
) -> None:
    """Check the arguments of an execution path up front so a mistake names the argument.

    Shapes, devices and dtypes of ``y = x @ W.T`` (see :mod:`particlesim.kernels.ops`); the
    reference, chunked and fused paths all call it, so it lives below them. With
    ``mixed_precision`` (the fused path) each tensor may be float32 or bfloat16 on its own;
    otherwise all must share one floating dtype.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a particlesim Kernel, got {type(kernel).__name__}")
    if target_pos.ndim != 2 or source_pos.ndim != 2:
        raise ValueError(
            "positions must be [M, D] and [N, D], got target_pos "
            f"{tuple(target_pos.shape)} and source_pos {tuple(source_pos.shape)}"
        )
    if target_pos.shape[1] != source_pos.shape[1]:
        raise ValueError(
            f"target_pos and source_pos must share the dimension D, got "
            f"{target_pos.shape[1]} and {source_pos.shape[1]}"
        )
    M, N, C = target_pos.shape[0], source_pos.shape[0], kernel.channels
    tensors = {"target_pos": target_pos, "source_pos": source_pos}
    if charge is not None:
        tensors["charge"] = charge
        ok = (charge.ndim == 1 and C == 1 and charge.shape[0] == M) or (
            charge.ndim == 2 and tuple(charge.shape) == (M, C)
        )
        if not ok:
            want = f"[{M}] or [{M}, 1]" if C == 1 else f"[{M}, {C}]"
            raise ValueError(
                f"charge must be {want} for {M} target particles and a {C}-channel kernel, "
                f"got {tuple(charge.shape)}"
            )
    if modulation is not None:
        tensors["modulation"] = modulation
        if tuple(modulation.shape) != (M, N):
            raise ValueError(
                f"modulation must be [M, N] = [{M}, {N}], got {tuple(modulation.shape)}"
            )
    if x is not None:
        tensors["x"] = x
        if x.ndim != 2 or x.shape[1] != N:
            raise ValueError(
                f"x must be [B, N] with N = {N} source particles, got {tuple(x.shape)}"
            )
    if len({t.device for t in tensors.values()}) > 1:
        raise ValueError(
            "all tensors must be on one device, got "
            + ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        )
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if mixed_precision:
        odd = {n: d for n, d in dtypes.items() if d not in (torch.float32, torch.bfloat16)}
        if odd:
            raise TypeError(f"tensors must be float32 or bfloat16 here, got {odd}")
        return
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"all tensors must share one dtype, got {dtypes}")
    if not next(iter(dtypes.values())).is_floating_point:
        raise TypeError(f"tensors must be floating point, got {dtypes}")
