"""The pluggy host: loads the ``tracer`` entry points and keeps one registry per extension kind.

Built-in plugins and third-party ones load the same way, so ``tracer plugins list`` cannot tell
them apart. Each hook implementation is called with a registrar scoped to its plugin, which is how
a name clash can name both distributions.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from types import ModuleType
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from tracer_cli import PROJECT_NAME
from tracer_cli.errors import MissingResourceError, TracerError, UsageError
from tracer_cli.sdk import hookspecs

ENTRY_POINT_GROUP = "tracer"
DISABLE_ENV = "TRACER_DISABLE_PLUGINS"
KINDS = ("backbones", "datasets", "tasks", "loggers")
_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class PluginError(TracerError):
    """A plugin broke the contract (bad name, duplicate registration, failing hook)."""


@dataclass(frozen=True)
class Entry:
    """One registered factory and where it came from."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "plugin": self.plugin,
                "distribution": self.distribution, "version": self.version}


class Registry:
    """Named factories of one kind (``backbones``, ``datasets``, ``tasks`` or ``loggers``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name lists the close matches."""
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UsageError(f"unknown {self.kind[:-1]} '{name}': {hint}"
                         f"known: {', '.join(self.names()) or '(none)'}")

    def _add(self, entry: Entry) -> None:
        if not _NAME_RE.match(entry.name):
            raise PluginError(f"{entry.plugin}: {self.kind[:-1]} name '{entry.name}' must be "
                              "lowercase-kebab (letters, digits, single dashes)")
        old = self._entries.get(entry.name)
        if old is not None:
            raise PluginError(
                f"{self.kind[:-1]} '{entry.name}' is registered twice: by plugin '{old.plugin}' "
                f"({old.distribution} {old.version}) and by plugin '{entry.plugin}' "
                f"({entry.distribution} {entry.version}); block one with "
                f"{DISABLE_ENV}=<plugin name>")
        self._entries[entry.name] = entry


class Registrar:
    """What a hook implementation receives: ``registry.add(name, factory)``."""

    def __init__(self, registry: Registry, plugin: str, distribution: str, version: str):
        self._registry = registry
        self._source = (plugin, distribution, version)

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if not callable(factory):
            raise PluginError(f"{self._source[0]}: factory for '{name}' is not callable")
        self._registry._add(Entry(name, factory, *self._source))


class PluginHost:
    """Loads plugins once and exposes one registry per kind."""

    def __init__(self, load_entry_points: bool = True, plugins: tuple[Any, ...] = ()):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        for name in filter(None, (n.strip() for n in os.environ.get(DISABLE_ENV, "").split(","))):
            self.pm.set_blocked(name)
        if load_entry_points:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for plugin in plugins:
            self.pm.register(plugin)
        self.pm.check_pending()
        self.registries = {kind: Registry(kind) for kind in KINDS}
        self._collect()

    def _collect(self) -> None:
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"tracer_register_{kind}")
            # One call per implementation, each with its own registrar, so every entry knows which
            # plugin (and distribution) added it. Registrars have no wrappers or results to merge.
            for impl in reversed(caller.get_hookimpls()):
                dist = dists.get(id(impl.plugin))
                registrar = Registrar(
                    self.registries[kind], impl.plugin_name,
                    dist.project_name if dist else "(not installed)",
                    dist.version if dist else "-")
                try:
                    impl.function(registry=registrar)
                except TracerError:
                    raise
                except Exception as exc:  # a broken plugin must not look like a tracer bug
                    raise PluginError(f"plugin '{impl.plugin_name}' failed in "
                                      f"tracer_register_{kind}: {exc!r}") from exc

    @property
    def backbones(self) -> Registry:
        return self.registries["backbones"]

    @property
    def datasets(self) -> Registry:
        return self.registries["datasets"]

    @property
    def tasks(self) -> Registry:
        return self.registries["tasks"]

    @property
    def loggers(self) -> Registry:
        return self.registries["loggers"]

    def listing(self) -> dict[str, list[dict[str, str]]]:
        """The ``tracer plugins list --json`` document."""
        return {kind: [e.as_dict() for e in reg.entries()] for kind, reg in self.registries.items()}


def require_module(module: str, needed_by: str, install: str) -> ModuleType:
    """Import ``module`` for a plugin, or stop with the pip command that installs it.

    ``needed_by`` says what needs it (``"logger 'wandb' (run.loggers)"``) and ``install`` is what
    to pip-install (``"'tracer-clip[wandb]'"``). Plugin factories call this, so a missing optional
    package fails when the recipe is checked, before any training.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingResourceError(f"{needed_by} needs the Python package '{module}', which "
                                   f"cannot be imported ({exc}); install it with: "
                                   f"pip install {install}") from None


def declared(kind: str, name: str, capability: str, default: Any = None) -> Any:
    """What the factory registered as ``name`` in ``kind`` declares as ``capability``: an optional
    attribute of the factory (a function attribute, or a class attribute of a factory class),
    read without calling it, so nothing is built. ``default`` when the factory does not declare
    it or no plugin registers ``name`` (a recipe saved by a plugin since removed)."""
    registry = get_host().registries[kind]
    if name not in registry:
        return default
    return getattr(registry.get(name).factory, capability, default)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, loaded on first use (not at import time)."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def reset_host() -> None:
    """Forget the loaded host, so the next :func:`get_host` re-reads entry points (tests)."""
    global _HOST
    _HOST = None
