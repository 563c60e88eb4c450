"""Reading what a plugin's callable asks for, and calling it with that.

The engine adapts plain classes and functions from plugins by their signatures: a
constructor is given the keywords it names (:func:`construct_with`), a method the
arguments it names (:func:`call_by_name`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from particlesim.errors import OptionError


def _init_owner(cls: type) -> type:
    """The class in ``cls``'s MRO that defines the ``__init__`` it uses."""
    return next(klass for klass in cls.__mro__ if "__init__" in vars(klass))


def _generic_owners() -> tuple[type, ...]:
    import torch

    # by owner, not by function: TorchDynamo wraps nn.Module.__init__ once it is imported
    return (object, torch.nn.Module)


_GENERIC_OWNERS = _generic_owners()

__all__ = [
    "accepts",
    "by_name",
    "call_by_name",
    "construct_with",
    "parameter_names",
    "signature_of",
]


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature
        return None


def parameter_names(fn: Callable[..., Any]) -> list[str]:
    """The named parameters of ``fn`` (of a class: its constructor's), ``self`` left out."""
    signature = signature_of(fn)
    if signature is None:
        return []
    return [
        name
        for name, p in signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` (a class: its constructor) takes keyword ``name`` (or ``**kwargs``)."""
    signature = signature_of(fn)
    if signature is None:
        return False
    params = signature.parameters
    if name in params:
        return True
    if inspect.isclass(fn) and _init_owner(fn) in _GENERIC_OWNERS:  # nn.Module's (*args, **kw)
        return False
    return any(p.kind == p.VAR_KEYWORD for p in params.values())


def construct_with(factory: Callable[..., Any], offered: Mapping[str, Any], **options: Any) -> Any:
    """``factory(**options, **the offered keywords it accepts)``."""
    extra = {k: v for k, v in offered.items() if accepts(factory, k) and k not in options}
    return factory(**options, **extra)


def by_name(fn: Callable[..., Any], what: str) -> Callable[[Mapping[str, Callable[[], Any]]], Any]:
    """``fn`` as a function of the arguments on offer: it takes those its parameters name.

    The signature is read once, here, so the returned function costs a dict lookup per
    parameter; call it with ``{name: maker}``, each ``maker()`` making the argument.

    Raises (when called):
        OptionError: a required parameter is not one on offer.
    """
    signature = signature_of(fn)
    wanted = [
        (name, p.default is p.empty)
        for name, p in (signature.parameters if signature else {}).items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name != "self"
    ]

    def call(available: Mapping[str, Callable[[], Any]]) -> Any:
        kwargs = {}
        for name, required in wanted:
            if name in available:
                kwargs[name] = available[name]()
            elif required:
                known = ", ".join(sorted(available))
                raise OptionError("name", f"{what} asks for {name!r}, which the engine does "
                                  f"not give (it gives: {known})")  # fmt: skip
        return fn(**kwargs)

    return call


def call_by_name(
    fn: Callable[..., Any], available: Mapping[str, Callable[[], Any]], what: str
) -> Any:
    """Call ``fn`` once with the arguments its parameters name (see :func:`by_name`)."""
    return by_name(fn, what)(available)
