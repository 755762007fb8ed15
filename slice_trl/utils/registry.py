"""Registries of the plug-in points: initialisers, strategies, task sources and metrics.

Each kind has ONE `Registry` here (a leaf: no torch, nothing of the package imported at module
level). An implementation registers itself next to its code, with its traits:

    from slice_trl.utils.registry import initializers

    @initializers.register("my_init", uses_gradients=False, needs_2r=False, display_name="My init")
    class MyInitializer: ...

and is then used from a recipe by name (``init: {method: my_init}``), checked like a built-in.

Where the entries come from (looked up lazily, on the first `get`/`names`/`entries`):

- built-ins: every module of the registry's built-in package is imported (`pkgutil`), so adding
  one in this repository is adding ONE file to e.g. ``slice_trl/initializers/``;
- a user's installed package: one Python entry point group per kind (``slice_trl.initializers``,
  ``slice_trl.strategies``, ``slice_trl.task_sources``, ``slice_trl.metrics``); the entry point's
  module is imported and registers itself with the decorator. E.g. in a ``pyproject.toml``:

      [project.entry-points."slice_trl.initializers"]
      my_init = "my_package.my_init"

There is deliberately no recipe key naming a module to import: validating a recipe never runs code
the recipe chooses (issue 27); the entry points are code the user installed.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

__all__ = ["Entry", "Registry", "suggest", "initializers", "strategies", "task_sources", "metrics", "ENTRY_POINT_GROUPS"]


def suggest(value, choices: Iterable, *, n: int = 1, cutoff: float = 0.6) -> str:
    """The "did you mean" hint of an error message: `` Did you mean 'x'?`` for the closest of
    ``choices`` (``n`` > 1: `` Did you mean ['x', 'y']?``), or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" Did you mean {close[0]!r}?" if n == 1 else f" Did you mean {close}?"


@dataclass(frozen=True)
class Entry:
    """One registered implementation: ``name``, the registered object ``obj`` (a class or a
    function) and its ``traits`` (keyword arguments of `Registry.register`, defaults filled in)."""

    name: str
    obj: Any
    traits: dict = field(default_factory=dict)

    def __getattr__(self, trait: str):
        try:
            return self.__dict__["traits"][trait]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('name')!r} has no trait {trait!r}") from None


class Registry:
    """name -> `Entry` of one kind of plug-in.

    ``kind``: the noun of error messages ("initialiser"); ``builtin``: the package (or module)
    whose modules are imported to find the built-ins; ``group``: the entry point group;
    ``field``: the recipe field that names an entry ("init.method"), named in a lookup error;
    ``defaults``: traits an entry has unless it registers another value (when given, the only
    traits it may register); ``cutoff``: how close a name must be to be suggested."""

    def __init__(self, kind: str, builtin: str, group: str, field: str, defaults: dict | None = None,
                 cutoff: float = 0.6):
        self.kind, self.builtin, self.group, self.field, self.cutoff = kind, builtin, group, field, cutoff
        self.defaults = dict(defaults or {})
        self._entries: dict[str, Entry] = {}
        self._loaded = False
        self._loading = False

    def register(self, name: str, **traits) -> Callable:
        """Decorator: register the decorated class or function as ``name`` with ``traits``.
        A second registration of the same name by a different object is refused (two plug-ins
        must not silently replace each other or a built-in)."""
        unknown = sorted(set(traits) - set(self.defaults)) if self.defaults else []
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown traits {unknown}; known: {sorted(self.defaults)}.")

        def deco(obj):
            old = self._entries.get(name)
            if old is not None and _qualname(old.obj) != _qualname(obj):
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {_qualname(old.obj)} and by "
                                 f"{_qualname(obj)}; rename one.")
            self._entries[name] = Entry(name, obj, {**self.defaults, **traits})
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True  # a built-in module asking the registry while it is imported sees what is there
        try:
            root = importlib.import_module(self.builtin)
            for info in pkgutil.iter_modules(getattr(root, "__path__", []), prefix=f"{self.builtin}."):
                importlib.import_module(info.name)
            for ep in entry_points(group=self.group):
                importlib.import_module(ep.module)  # the module registers itself (its decorators run)
            self._loaded = True
        finally:
            self._loading = False

    def names(self) -> list[str]:
        """Every registered name, sorted (registration order depends on what was imported first)."""
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry, in the order of `names`."""
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Entry:
        """The entry named ``name``; a ValueError naming the recipe field, the closest name and every
        known name otherwise."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = sorted(self._entries)
            raise ValueError(f"{self.field}={name!r} is unknown (no such {self.kind})."
                             f"{suggest(name, known, cutoff=self.cutoff)} Choose one of {known} (a package of your "
                             f"own adds one through the {self.group!r} entry point group; CONTRIBUTING.md).") from None

    def trait(self, name: str, trait: str, default=None):
        """``name``'s trait, or ``default`` when ``name`` is not registered (e.g. a finished run's
        record naming a plug-in that is not installed here)."""
        self._load()
        entry = self._entries.get(name)
        return default if entry is None else entry.traits.get(trait, default)


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


ENTRY_POINT_GROUPS = ("slice_trl.initializers", "slice_trl.strategies", "slice_trl.task_sources", "slice_trl.metrics")

initializers = Registry(
    "initialiser", "slice_trl.initializers", "slice_trl.initializers", "init.method",
    defaults={"uses_gradients": False, "needs_2r": False, "display_name": None, "has_gate": False,
              "rescaled": False})
strategies = Registry("strategy", "slice_trl.strategies", "slice_trl.strategies", "strategy.name", cutoff=0.5)
# the two below are named inside a task entry, whose errors say which task (TaskSpec(<task>): source=...)
task_sources = Registry("task source", "slice_trl.tasks", "slice_trl.task_sources", "source",
                        defaults={"validate": None, "fields": (), "whole_eval": False})
metrics = Registry("metric", "slice_trl.evaluation.metrics", "slice_trl.metrics", "metric")
