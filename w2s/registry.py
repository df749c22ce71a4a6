"""One registry style for every pluggable kind: cache formats, scoring backends, searches, tasks and losses.

A component is named in a config by a registered short name (`parquet`, `vllm`, `cbs`, `wspo`) or by the dotted
path of any importable object (`my_package.losses.MyLoss`), torchtune's `_component_` convention; a mapping with
`_component_` also carries the component's arguments:

    train:
      loss: {_component_: w2s.train.losses.WSPO, gamma: 0.1}

Adding one is one new file plus, at most, one line: decorate it with `@LOSSES.register("name")` (the file must be
imported, e.g. by naming it once by its dotted path), or name it by its dotted path and register nothing. The
built-in components register themselves in the modules listed as a registry's `builtins`, which are imported the
first time the registry is read (so a registry in a low module never imports the rooms above it at load time).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from w2s.errors import ConfigError

T = TypeVar("T")
COMPONENT = "_component_"


class Registry(Generic[T]):
    """Name -> component of one kind; names are unique, lookups of unknown names say what is known."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = ()):
        self.kind = kind
        """What the components are, for messages: 'cache format', 'loss'."""
        self.builtins = builtins
        """Modules whose import registers the built-in components (imported on the first read)."""
        self._entries: dict[str, T] = {}
        self._loaded = not builtins

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: registers the object under `name` (refused if the name is taken) and returns it unchanged."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a builtin module may read the registry while it registers
            for module in self.builtins:
                importlib.import_module(module)

    def names(self) -> tuple[str, ...]:
        """The registered names, built-ins first."""
        self._load()
        return tuple(self._entries)

    def get(self, name: str, where: str = "") -> T:
        """The component a config names: a registered name, or the dotted path of an importable object.

        Raises:
            ConfigError: neither; the message names `where` (the config key) and the registered names.
        """
        self._load()
        if name in self._entries:
            return self._entries[name]
        where = f"{where}: " if where else ""
        if isinstance(name, str) and "." in name:
            try:
                obj = _import_object(name)
            except ImportError as err:  # the module is there but fails to import: say why, not "unknown"
                raise ConfigError(f"{where}cannot import {name!r}: {err}") from None
            if obj is not None:
                return obj
        known = ", ".join(self._entries) or "none"
        raise ConfigError(f"{where}unknown {self.kind} {name!r}: use one of {known}, or the dotted path of a class")

    def build(self, spec: str | Mapping[str, Any], where: str = "", **extra: Any) -> Any:
        """Instantiates a component spec: a name or path (no arguments), or a mapping of `_component_` and its
        arguments; `extra` arguments are added (a spec's own win)."""
        if isinstance(spec, str):
            return self.get(spec, where)(**extra)
        arguments = {key: value for key, value in spec.items() if key != COMPONENT}
        if COMPONENT not in spec:
            raise ConfigError(f"{where or self.kind}: a mapping needs {COMPONENT} (the {self.kind}'s name or path)")
        component = self.get(spec[COMPONENT], f"{where}.{COMPONENT}" if where else COMPONENT)
        try:
            return component(**{**extra, **arguments})
        except TypeError as error:  # an argument the component does not take, or one it needs and was not given
            raise ConfigError(f"{where or self.kind}: {spec[COMPONENT]} {error}") from None


def _import_object(path: str) -> Any:
    """The object a dotted path names; None when its module does not exist or lacks it (ImportError when the
    module exists but fails to import)."""
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(f"{err.name}.")):
            return None  # no such module
        raise
    return getattr(module, attribute, None)
