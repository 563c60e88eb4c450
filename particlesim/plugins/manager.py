"""Find, load and validate plugins, then fill one :class:`Registry` per extension kind.

Load order is fixed: built-ins, then installed entry points (group
``"particlesim"``), then local ``.py`` files named by the user. Built-ins are
registered with the same ``pm.register`` call as everything else (house rule 2).

Failure policy, and why:

* An entry-point plugin that fails to import is *reported and skipped*
  (:class:`PluginFailure`, a warning): one broken package installed in the
  environment must not make particlesim unusable. We loop over the entry points
  ourselves instead of ``pm.load_setuptools_entrypoints``, which calls
  ``ep.load()`` bare and silently skips names already taken.
  ``PARTICLESIM_STRICT_PLUGINS=1`` turns such failures into errors (for CI).
* A file the user named explicitly (scenario ``plugins = [...]`` or ``-p``) is
  *fatal* when missing or broken: the user asked for it, so running without it
  would silently produce a different experiment.
* Inconsistent registrations (misspelt hook, an item without a ``name``, a
  duplicate name) are fatal whatever their source, and the message names the
  plugin so that ``-p no:NAME`` can disable it.

Environment variables: ``PARTICLESIM_PLUGINS`` (comma list; when set, only these
entry-point plugins load, and an empty value loads none),
``PARTICLESIM_STRICT_PLUGINS=1``, ``PARTICLESIM_TRACE_PLUGINS=1`` (print every
hook call to stderr).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from particlesim.errors import PluginError, RegistryError, close_matches
from particlesim.plugins import hookspecs
from particlesim.plugins.registry import Registry

REGISTRY_KINDS: tuple[str, ...] = (
    "kernel",
    "interaction",
    "potential",
    "integrator",
    "move",
    "observable",
    "dataset",
    "writer",
    "activation",
    "loss",
    "model",
    "reproduction",
)
"""Extension kinds; kind ``k`` is filled by the hook ``particlesim_register_<k>s``."""

ENTRY_POINT_GROUP = "particlesim"
BUILTINS_MODULE = "particlesim.plugins.builtins"
BUILTINS_NAME = "particlesim"

ENV_PLUGINS = "PARTICLESIM_PLUGINS"
ENV_STRICT = "PARTICLESIM_STRICT_PLUGINS"
ENV_TRACE = "PARTICLESIM_TRACE_PLUGINS"

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_HOOK_PREFIX = "particlesim_"


def registration_hook(kind: str) -> str:
    """The name of the hook that fills registry ``kind`` (``"kernel"`` → ``…_register_kernels``)."""
    plural = f"{kind}es" if kind.endswith("s") else f"{kind}s"
    return f"{_HOOK_PREFIX}register_{plural}"


class PluginWarning(UserWarning):
    """An entry-point plugin was skipped, or a plugin looks mistaken but is still usable."""


class _InvalidPluginError(PluginError):
    """pluggy rejected a plugin's hookimpls (wrong arguments…); skippable for entry points."""


@dataclass
class PluginInfo:
    """One registered plugin, as ``particlesim plugins`` lists it.

    ``source`` says where it came from: ``"built-in"``, ``"entry point <module:attr>"``
    or ``"file <absolute path>"``; ``registered`` maps a kind to the names the
    plugin added to that registry.
    """

    name: str
    source: str
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PluginFailure:
    """An entry-point plugin that could not be loaded and was skipped.

    ``error`` is one line, ``"<ExceptionType>: <message>"``.
    """

    name: str
    source: str
    error: str


def _one_line(exc: BaseException) -> str:
    """``"Type: message"`` on a single line (multi-line messages are joined with " | ")."""
    message = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PluginManager:
    """particlesim's plugin manager: a ``pluggy.PluginManager`` plus the registries it fills.

    Use :meth:`load` once, then ``manager.registry("kernel").create("gaussian", width=2)``
    for factories and ``manager.hook.particlesim_step_end(simulation=s, step=n)`` for
    lifecycle hooks (guarded by :meth:`has_impls` in hot loops).
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in REGISTRY_KINDS}
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self.disabled: list[str] = []
        self._loaded = False
        self._files: dict[Path, str] = {}
        self._untrace: Callable[[], None] | None = None

    # ---------------------------------------------------------------- public API

    @property
    def hook(self) -> Any:
        """``pm.hook``: call lifecycle hooks with keywords, ``hook.particlesim_step_end(...)``."""
        return self.pm.hook

    def registry(self, kind: str) -> Registry:
        """The registry for ``kind`` (one of :data:`REGISTRY_KINDS`)."""
        try:
            return self.registries[kind]
        except KeyError:
            raise RegistryError(
                f"unknown registry kind {kind!r}{close_matches(str(kind), REGISTRY_KINDS)}; "
                f"known: {', '.join(REGISTRY_KINDS)}"
            ) from None

    def has_impls(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name``; cheap, for guarding hot-loop calls."""
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            names = [n for n in vars(self.pm.hook) if n.startswith(_HOOK_PREFIX)]
            raise PluginError(f"unknown hook {hook_name!r}{close_matches(hook_name, names, n=1)}")
        return bool(caller.get_hookimpls())

    def plugin(self, name: str) -> PluginInfo:
        """The :class:`PluginInfo` of the registered plugin ``name``."""
        for info in self.plugins:
            if info.name == name:
                return info
        known = ", ".join(info.name for info in self.plugins) or "none"
        raise PluginError(f"no plugin named {name!r}; loaded: {known}")

    def load(
        self,
        *,
        builtins: Sequence[tuple[str, object]] | None = None,
        entry_points: bool = True,
        files: Sequence[str | Path] = (),
        base_dir: Path | None = None,
        disable: Sequence[str] = (),
    ) -> PluginManager:
        """Register plugins in load order, validate them and fill the registries.

        Args:
            builtins: ``(name, module_or_object)`` pairs registered first. ``None``
                imports :mod:`particlesim.plugins.builtins` and registers it as
                ``"particlesim"`` (nothing, if that module does not exist yet).
            entry_points: load installed plugins of entry-point group
                ``"particlesim"`` (filtered by ``PARTICLESIM_PLUGINS``).
            files: local ``.py`` plugin files; relative paths resolve against
                ``base_dir`` (the scenario's folder), else the working directory.
                The plugin's name is the file's stem.
            base_dir: folder that relative ``files`` are relative to.
            disable: plugin names not to register (``-p no:NAME``).

        Returns:
            ``self``, so that ``PluginManager().load()`` reads as one expression.

        Raises:
            PluginError: a named file is missing or fails to import, a plugin
                implements an unknown hook or registers an invalid item, two
                plugins share a name, or (strict mode) an entry point fails.
            RegistryError: two plugins register the same name in one registry.
        """
        if self._loaded:
            raise PluginError("PluginManager.load() was already called; create a new manager")
        self._loaded = True
        skip = {name.strip() for name in disable if name.strip()}
        if _env_flag(ENV_TRACE):
            self._start_tracing()

        for name, plugin in self._builtin_plugins(builtins):
            if self._skipped(name, skip):
                continue
            self._register(plugin, name, source="built-in", version=self._own_version())
        if entry_points:
            self._load_entry_points(skip)
        for file in files:
            self._load_file(file, base_dir, skip)
        unknown = skip - set(self.disabled)
        if unknown:  # entry points left out by PARTICLESIM_PLUGINS still count as known
            unknown -= {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        for name in sorted(unknown):
            warnings.warn(
                f"-p no:{name}: no plugin named {name!r} was found to disable",
                PluginWarning,
                stacklevel=2,
            )

        self._check_pending()
        self._fill_registries()
        return self

    # ---------------------------------------------------------------- sources

    @staticmethod
    def _builtin_plugins(
        builtins: Sequence[tuple[str, object]] | None,
    ) -> Sequence[tuple[str, object]]:
        if builtins is not None:
            return builtins
        try:
            module = importlib.import_module(BUILTINS_MODULE)
        except ModuleNotFoundError as exc:
            if exc.name == BUILTINS_MODULE:
                return ()
            raise
        return ((BUILTINS_NAME, module),)

    @staticmethod
    def _own_version() -> str | None:
        try:
            return importlib.metadata.version("particlesim")
        except importlib.metadata.PackageNotFoundError:
            return getattr(sys.modules.get("particlesim"), "__version__", None)

    def _skipped(self, name: str, skip: set[str]) -> bool:
        if name in skip:
            self.disabled.append(name)
            self._trace(f"plugin {name!r} disabled")
            return True
        return False

    def _load_entry_points(self, skip: set[str]) -> None:
        strict = _env_flag(ENV_STRICT)
        selected: set[str] | None = None
        if ENV_PLUGINS in os.environ:
            selected = {n.strip() for n in os.environ[ENV_PLUGINS].split(",") if n.strip()}
        found = sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
        )
        for ep in found:
            if selected is not None and ep.name not in selected:
                continue
            if self._skipped(ep.name, skip):
                continue
            source = f"entry point {ep.value}"
            try:
                plugin = ep.load()
            except Exception as exc:
                self._entry_point_failed(ep.name, source, exc, strict)
                continue
            version = ep.dist.version if ep.dist is not None else None
            try:
                self._register(plugin, ep.name, source=source, version=version)
            except _InvalidPluginError as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                self._entry_point_failed(ep.name, source, cause, strict)
        if selected:
            names = {ep.name for ep in found}
            for missing in sorted(selected - names):
                error = f"no entry point named {missing!r} in group {ENTRY_POINT_GROUP!r}"
                if strict:
                    raise PluginError(f"{ENV_PLUGINS} names plugin {missing!r}, but {error}")
                self.failures.append(PluginFailure(missing, f"{ENV_PLUGINS}", error))
                warnings.warn(
                    f"{ENV_PLUGINS} names plugin {missing!r}, which is not installed",
                    PluginWarning,
                    stacklevel=3,
                )

    def _entry_point_failed(self, name: str, source: str, exc: Exception, strict: bool) -> None:
        error = _one_line(exc)
        if strict:
            raise PluginError(
                f"plugin {name!r} ({source}) failed to load: {error} "
                f"({ENV_STRICT} is set, so this is an error)"
            ) from exc
        self.failures.append(PluginFailure(name, source, error))
        self._trace(f"plugin {name!r} FAILED: {error}")
        warnings.warn(
            f"particlesim plugin {name!r} ({source}) failed to load and was skipped: {error}",
            PluginWarning,
            stacklevel=4,
        )

    def _load_file(self, file: str | Path, base_dir: Path | None, skip: set[str]) -> None:
        given = str(file)
        path = Path(file).expanduser()
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise PluginError(f"plugin file {given} {what} (resolved to {path})")
        if path.suffix != ".py":
            raise PluginError(f"plugin file {given} is not a .py file (resolved to {path})")
        if path in self._files:  # named twice (scenario and -p): load once
            return
        name = path.stem
        if self._skipped(name, skip):
            return

        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        module_name = "particlesim_local_" + re.sub(r"\W", "_", name) + "_" + digest
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - .py always has a loader
            raise PluginError(f"plugin file {given} cannot be imported (resolved to {path})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            line = _error_line(exc, path)
            raise PluginError(
                f"plugin file {given} ({path}) failed to import{line}: {_one_line(exc)}"
            ) from exc
        self._files[path] = name
        version = getattr(module, "__version__", None)
        self._register(module, name, source=f"file {path}", version=version)

    # ---------------------------------------------------------------- registration

    def _register(self, plugin: object, name: str, *, source: str, version: str | None) -> None:
        """``pm.register`` with clear errors; a half-registered plugin is removed again."""
        if self.pm.has_plugin(name):
            other = self.plugin(name).source
            raise PluginError(
                f"two plugins are named {name!r}: one from {other}, one from {source}; "
                f"rename one, or disable one with -p no:{name}"
            )
        for info in self.plugins:
            if self.pm.get_plugin(info.name) is plugin:
                raise PluginError(
                    f"plugin {name!r} ({source}) is the same object as plugin "
                    f"{info.name!r} ({info.source}); register it once"
                )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise _InvalidPluginError(f"plugin {name!r} ({source}): {_one_line(exc)}") from exc
        unmarked = self._warn_unmarked(plugin, name)
        hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
        if not hooks and not unmarked and source != "built-in":
            warnings.warn(
                f"plugin {name!r} ({source}) implements no particlesim hook, so it adds "
                "nothing; mark its hook functions with 'from particlesim import hookimpl'",
                PluginWarning,
                stacklevel=4,
            )
        version = None if version is None else str(version)
        self.plugins.append(PluginInfo(name, source, version, hooks))
        self._trace(f"registered plugin {name!r} from {source}: {', '.join(hooks) or 'no hooks'}")

    def _warn_unmarked(self, plugin: object, name: str) -> bool:
        """Warn about ``particlesim_*`` functions that lack ``@hookimpl`` (silently ignored).

        Returns whether there was any.
        """
        marker = f"{hookspecs.PROJECT_NAME}_impl"
        found = False
        for attr in dir(plugin):
            if not attr.startswith(_HOOK_PREFIX):
                continue
            try:
                value = inspect.getattr_static(plugin, attr)
            except AttributeError:  # pragma: no cover - dir() and getattr_static disagree
                continue
            value = getattr(value, "__func__", value)
            if inspect.isfunction(value) and not hasattr(value, marker):
                found = True
                warnings.warn(
                    f"plugin {name!r} defines {attr}() without @hookimpl, so it is ignored; "
                    f"decorate it with 'from particlesim import hookimpl'",
                    PluginWarning,
                    stacklevel=4,
                )
        return found

    def _check_pending(self) -> None:
        """Every implemented hook must have a spec: misspelt hooks are errors naming the plugin."""
        known = [n for n in vars(self.pm.hook) if n.startswith(_HOOK_PREFIX)]
        known = [n for n in known if getattr(self.pm.hook, n).has_spec()]
        for hook_name, caller in list(vars(self.pm.hook).items()):
            if hook_name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({self.plugin(impl.plugin_name).source}) "
                    f"implements unknown hook {hook_name!r}{close_matches(hook_name, known, n=1)}; "
                    f"fix the name, or disable the plugin with -p no:{impl.plugin_name}"
                )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # pragma: no cover - caught above
            raise PluginError(str(exc)) from exc

    def _fill_registries(self) -> None:
        """Call each registration hookimpl on its own, in load order, and file its items."""
        order = {info.name: index for index, info in enumerate(self.plugins)}
        infos = {info.name: info for info in self.plugins}
        for kind in REGISTRY_KINDS:
            hook_name = registration_hook(kind)
            registry = self.registries[kind]
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            for impl in sorted(impls, key=lambda i: order.get(i.plugin_name, len(order))):
                where = f"plugin {impl.plugin_name!r}: {hook_name}()"
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(f"{where} cannot be a hook wrapper")
                try:
                    items = impl.function()
                except Exception as exc:
                    raise PluginError(f"{where} raised {_one_line(exc)}") from exc
                self._trace(f"{where} -> {_short_repr(items)}")
                for factory in _validated_items(items, where, kind):
                    _check_factory(factory, where, kind, impl.plugin_name)
                    registry.add(factory.name, factory, impl.plugin_name)
                    if impl.plugin_name in infos:
                        infos[impl.plugin_name].registered.setdefault(kind, []).append(factory.name)

    # ---------------------------------------------------------------- tracing

    def _start_tracing(self) -> None:
        def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            args = ", ".join(f"{k}={_short_repr(v)}" for k, v in kwargs.items())
            plugins = ", ".join(impl.plugin_name for impl in impls) or "no plugins"
            self._trace(f"call {hook_name}({args}) -> {plugins}")

        def after(
            outcome: pluggy.Result[Any],
            hook_name: str,
            impls: Sequence[Any],
            kwargs: Mapping[str, Any],
        ) -> None:
            if outcome.exception is not None:
                self._trace(f"  {hook_name} raised {_one_line(outcome.exception)}")
            else:
                self._trace(f"  {hook_name} returned {_short_repr(outcome.get_result())}")

        self._untrace = self.pm.add_hookcall_monitoring(before, after)

    def _trace(self, message: str) -> None:
        if self._untrace is not None:
            print(f"[particlesim plugins] {message}", file=sys.stderr)

    def __repr__(self) -> str:
        names = ", ".join(info.name for info in self.plugins)
        return f"PluginManager(plugins=[{names}], failures={len(self.failures)})"


def _validated_items(items: object, where: str, kind: str) -> list[Any]:
    """Check a registration hook's result: a list/tuple of objects with a snake_case ``name``."""
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        raise PluginError(
            f"{where} must return a list of {kind} factories, got {type(items).__name__}: "
            f"{_short_repr(items)}"
        )
    for item in items:
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"{where} returned {_short_repr(item)}, which has no 'name' "
                f"(each {kind} needs a non-empty str class attribute 'name')"
            )
        if not _SNAKE_CASE.fullmatch(name):
            raise PluginError(
                f"{where} returned {kind} name {name!r}, which is not snake_case "
                f"(lower-case letters, digits and underscores, like 'my_{kind}')"
            )
    return list(items)


def _check_factory(factory: Any, where: str, kind: str, plugin: str) -> None:
    """Kind-specific checks of one registered item, when plugins load.

    A kernel that is not a :class:`~particlesim.kernels.Kernel`, or a radial kernel whose
    profile is not elementwise, not finite, or disagrees with its closed-form derivative;
    any other kind's factory that lacks the method the engine calls or takes its options
    by position (:func:`particlesim.plugins.adapters.factory_problem`): refused here,
    naming the plugin, rather than failing (or training wrongly) mid-run.
    """
    if kind == "kernel":
        from particlesim.kernels.base import kernel_class_problem  # torch only when kernels load

        problem = kernel_class_problem(factory)
    else:
        from particlesim.plugins.adapters import factory_problem

        problem = factory_problem(kind, factory)
    if problem is not None:
        raise PluginError(
            f"{where} returned {kind} {factory.name!r}, which {problem}; fix it, or disable "
            f"the plugin with -p no:{plugin}"
        )


def _error_line(exc: BaseException, path: Path) -> str:
    """``" at line N"`` for the innermost frame of ``exc`` inside ``path`` (or a SyntaxError)."""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return f" at line {exc.lineno}"
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return f" at line {line}" if line is not None else ""


def load_plugins(**kwargs: Any) -> PluginManager:
    """``PluginManager().load(**kwargs)``: the usual way to get a loaded manager."""
    return PluginManager().load(**kwargs)


def describe(manager: PluginManager) -> list[dict[str, Any]]:
    """Rows for ``particlesim plugins``: one per loaded plugin, then one per failure.

    Each row has ``name``, ``version``, ``source``, ``hooks``, ``registered``
    (kind → names), ``status`` (``"ok"`` or ``"FAILED: <error>"``) and ``error`` (None, or
    the one-line error of a plugin that failed to load).
    """
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "hooks": list(info.hooks),
            "registered": {kind: list(names) for kind, names in info.registered.items()},
            "status": "ok",
            "error": None,
        }
        for info in manager.plugins
    ]
    rows += [
        {
            "name": failure.name,
            "version": None,
            "source": failure.source,
            "hooks": [],
            "registered": {},
            "status": f"FAILED: {failure.error}",
            "error": failure.error,
        }
        for failure in manager.failures
    ]
    return rows
