"""Checking a TOML table against a constructor's typed signature.

Every configurable thing (a kernel, an integrator, a data set, a model, and
the engine's own sections) declares its options as keyword arguments with type
hints and defaults. :func:`check_options` turns that signature into the
validation of one scenario table: unknown keys (with close-match
suggestions), missing required keys and wrong types, each error naming the
key path. Plugins get the same validation for free.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from particlesim.errors import ScenarioError, close_matches

_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    type(None): "nothing",
}


def type_name(value: Any) -> str:
    """How a TOML value is called in messages: ``'abc' (a string)``."""
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return f"{value!r} ({kinds.get(type(value), type(value).__name__)})"


def describe(annotation: Any) -> str:
    """Human words for a type annotation (``"an integer or nothing"``)."""
    origin = get_origin(annotation)
    if annotation in _NAMES:
        return _NAMES[annotation]
    if annotation is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(annotation) if a is not type(None))
    if origin in (list, tuple, typing.Sequence, Sequence, Iterable) or annotation in (list, tuple):
        args = get_args(annotation)
        return (
            f"an array of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
            if args
            else "an array"
        )
    if origin in (dict, Mapping) or annotation is dict:
        return "a table"
    return getattr(annotation, "__name__", str(annotation))


def with_source(error: ScenarioError, source: str) -> ScenarioError:
    """``error`` naming the scenario file ``source`` too (unchanged if it already names one)."""
    if not source or error.source:
        return error
    return ScenarioError(error.detail, path=error.path, source=source)


def check_type(value: Any, annotation: Any, path: str, *, source: str = "") -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise ScenarioError.

    The error names the key ``path`` and, when given, the scenario file ``source``.
    """
    try:
        return _check_type(value, annotation, path)
    except ScenarioError as exc:
        raise with_source(exc, source) from None


def _check_type(value: Any, annotation: Any, path: str) -> Any:
    origin = get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return value
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, path)
            except ScenarioError:
                continue
        raise ScenarioError(f"expected {describe(annotation)}, got {type_name(value)}", path=path)
    if origin is Literal:
        choices = get_args(annotation)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        hint = close_matches(str(value), [str(c) for c in choices])
        raise ScenarioError(
            f"expected one of {', '.join(repr(c) for c in choices)}, got {type_name(value)}{hint}",
            path=path,
        )
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple, typing.Sequence, Iterable) or annotation in (list, tuple):
        if isinstance(value, list):
            args = get_args(annotation)
            if not args:
                return value
            return [_check_type(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin in (dict, Mapping) or annotation is dict:
        if isinstance(value, dict):
            args = get_args(annotation)
            if len(args) == 2:
                return {k: _check_type(v, args[1], f"{path}.{k}") for k, v in value.items()}
            return value
    else:
        return value  # an annotation we do not police (a tensor, a module…)
    raise ScenarioError(f"expected {describe(annotation)}, got {type_name(value)}", path=path)


def option_parameters(
    factory: Callable[..., Any], exclude: Iterable[str] = ()
) -> dict[str, inspect.Parameter]:
    """The keyword options of ``factory`` (a class or function), minus ``exclude``."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    signature = inspect.signature(target)
    skip = {"self", *exclude}
    return {
        name: p
        for name, p in signature.parameters.items()
        if name not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def option_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable hints: validate names only
        return {}


def check_options(
    factory: Callable[..., Any],
    table: Mapping[str, Any],
    path: str,
    *,
    exclude: Iterable[str] = (),
    what: str = "",
    source: str = "",
) -> dict[str, Any]:
    """Validate ``table`` against ``factory``'s keyword options; return the checked kwargs.

    Raises :class:`ScenarioError` for an unknown key (suggesting close ones and
    listing the valid keys), a missing required option, or a wrong type; the
    error names the key path and, when given, the scenario file ``source``.
    """
    try:
        return _check_options(factory, table, path, exclude=exclude, what=what)
    except ScenarioError as exc:
        raise with_source(exc, source) from None


def _check_options(
    factory: Callable[..., Any],
    table: Mapping[str, Any],
    path: str,
    *,
    exclude: Iterable[str],
    what: str,
) -> dict[str, Any]:
    params = option_parameters(factory, exclude)
    hints = option_hints(factory)
    checked: dict[str, Any] = {}
    accepts_any = any(
        p.kind == p.VAR_KEYWORD
        for p in inspect.signature(
            factory.__init__ if inspect.isclass(factory) else factory
        ).parameters.values()
    )
    for key, value in table.items():
        key_path = f"{path}.{key}" if path else key
        if key not in params:
            if accepts_any:
                checked[key] = value
                continue
            label = f" for {what}" if what else ""
            valid = ", ".join(params) or "none"
            raise ScenarioError(
                f"unknown key{label}{close_matches(key, params)}; valid keys: {valid}",
                path=key_path,
            )
        checked[key] = _check_type(value, hints.get(key, Any), key_path)
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in checked:
            label = f" of {what}" if what else ""
            raise ScenarioError(
                f"missing required key {name!r}{label} ({describe(hints.get(name, Any))})",
                path=path,
            )
    return checked


def defaults(factory: Callable[..., Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Default value of every option that has one (for the resolved scenario)."""
    return {
        name: p.default
        for name, p in option_parameters(factory, exclude).items()
        if p.default is not inspect.Parameter.empty
    }


def without_none(value: Any) -> Any:
    """``value`` with every ``None`` entry of its tables dropped, as TOML (no null) writes it."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value
