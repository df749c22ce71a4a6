"""Typed configuration: one dataclass per section, YAML files, dotted `key=value` overrides.

A config file is YAML whose top-level keys are section names (`world`, `cache`, `train`, `eval`, `search`).
Each section is a plain dataclass whose fields carry a docstring right below them; those docstrings are what
`w2s <command> --help` prints, so the help text and the code can never drift apart.

Overrides on the command line use dotted paths (`world.seed=3`, `train.gamma=0.5`); a text field takes the value
exactly as typed (`cache.data.path=007` is the text 007), any other is parsed as YAML and checked against the field's
type. A key given twice in a file is refused, as is a boolean where a number belongs. The resolved config is saved
beside every output (`config.yaml`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from w2s.errors import ConfigError
from w2s.io import atomic_write_text

__all__ = [
    "ConfigError",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "require",
    "require_finite",
    "require_installed",
    "require_seed",
    "save_config",
]


SHIPPED_CONFIGS = next(
    (p for p in (Path(__file__).parent / "configs", Path(__file__).parents[1] / "configs") if p.is_dir()),
    Path(__file__).parent / "configs",
)
"""The configs shipped with w2s: w2s/configs/ once installed (package data), the repository's configs/ in a
checkout."""


def shipped_or_given(name: str) -> Path:
    """A config file named by the user: as given (relative to the working directory) when it exists, else the copy
    shipped with w2s for a `configs/<file>` name, so `--config configs/tiny.yaml` works from any directory."""
    path = Path(name).expanduser()
    shipped = SHIPPED_CONFIGS / path.name
    if not path.exists() and not path.is_absolute() and path.parent == Path("configs") and shipped.is_file():
        return shipped
    return path


def require(condition: bool, key: str, why: str) -> None:
    """Refuses a config value at load time: raises ConfigError("key: why") unless `condition` holds.

    Sections call it from `__post_init__`, so a bad value is refused before any model loads, whether the
    section came from YAML, an override or a direct constructor call.
    """
    if not condition:
        raise ConfigError(f"{key}: {why}")


def require_finite(value: float, key: str, positive: bool = False, nonzero: bool = False) -> None:
    """Refuses nan and inf (and, when asked, values <= 0 or == 0), naming the key and the value."""
    require(math.isfinite(value), key, f"must be a finite number, got {value!r}")
    require(not positive or value > 0, key, f"must be > 0, got {value!r}")
    require(not nonzero or value != 0, key, f"must not be 0, got {value!r}")


SEED_LIMIT = 2**31
"""Seeds are in [0, 2**31): vLLM seeds a search's requests with seed * 2**32 + n, which must fit in 63 bits, and
every other consumer (torch, numpy, random) takes such a seed."""


def require_seed(value: int, key: str) -> None:
    """Refuses a seed outside [0, 2**31)."""
    require(0 <= value < SEED_LIMIT, key, f"must be in [0, 2**31), got {value}")


def require_installed(module: str, key: str, extra: str) -> None:
    """Refuses a setting that needs an optional package (vllm, ray) which is not installed, naming the w2s extra
    that installs it; checked without importing the package, so before anything is loaded or written."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        found = False
    require(found, key, f"needs the {module} package, which is not installed here: pip install 'w2s[{extra}]'")


def field_docs(cls: type) -> dict[str, str]:
    """Reads the docstring written under each field of a dataclass (the litgpt convention), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """The field docstrings written in `cls`'s own body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
"""How a refusal names a plain type (a union's message lists every option: `expected an integer or 'auto'`)."""


def _described(hint: Any) -> str:
    """A type hint in the words of a refusal, for a user who wrote YAML, not Python."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_described(option) for option in typing.get_args(hint))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks `value` against the type hint `hint`, converting ints to floats and dicts to dataclasses."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_described(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(hint, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return [_coerce(item, item_hint, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint in (int, float) and isinstance(value, bool):  # bool is an int subclass: `max_steps: true` is a mistake
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} (a boolean, not a number)")
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError as err:
            raise ConfigError(f"{key}: expected float, got {value!r}") from err
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


_PLACE = re.compile(r"^[\w.]*\*(?=\.)")
"""The `section.*` that starts a nested section's refusal, where from_dict puts the section's dotted path."""


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a mapping, refusing unknown keys and wrongly typed values."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    where = prefix or cls.__name__
    moved = [key for key in unknown if key in getattr(cls, "moved", {})]
    if moved:  # a key of an older layout: say where it lives now, not only that it is unknown
        went = "; ".join(f"{where}.{key} moved to {where}.{cls.moved[key]}" for key in moved)
        raise ConfigError(f"{went} (docs/configuration.md)")
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        shorthand = getattr(hints[field.name], "shorthand", "")
        if shorthand and isinstance(value, str):  # a plain string sets a section's main field (a source's path)
            value = {shorthand: value}
        if dataclasses.is_dataclass(hints[field.name]) and isinstance(value, dict):
            # A partial mapping updates the field's own default (which may differ from the class defaults).
            value = _merge_section(hints[field.name], _default_dict(field), value)
        kwargs[field.name] = _coerce(value, hints[field.name], f"{prefix}.{field.name}" if prefix else field.name)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # a nested section that cannot know where it sits (world.weak or world.strong; eval.vllm or generate.vllm)
        # names its keys `world.*.lr`, `vllm.*.dtype`: here its place is known, so the refusal names it
        if not prefix or not _PLACE.match(str(err)):
            raise
        raise ConfigError(_PLACE.sub(prefix, str(err), count=1)) from None


def _default_dict(field: dataclasses.Field) -> dict:
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return dataclasses.asdict(field.default_factory())  # type: ignore[misc]
    return dataclasses.asdict(field.default) if dataclasses.is_dataclass(field.default) else {}


def _merge_section(cls: type, base: dict, update: dict) -> dict:
    """`base` (a section's defaults) updated by `update`; nested sections are merged key by key, while any other
    value, a plain mapping such as `eval.task` included, is replaced whole (its own class decides what a partial
    mapping means)."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in update.items():
        nested = hints.get(key)
        if dataclasses.is_dataclass(nested) and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_section(nested, merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a mapping key given twice is refused (PyYAML would keep the last one and
    silently drop the other)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may redefine keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                given = key in seen
            except TypeError:  # an unhashable key: the base constructor refuses it with its own message
                continue
            if given:
                raise ConfigError(f"line {line}: key {key!r} is given twice (first on line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: plain data only


def _hint_at(cls: type, keys: list[str]) -> Any:
    """The type hint of the field a dotted override names, or None when the path leaves the dataclasses (an
    unknown key, or a key inside a plain mapping such as `eval.task`)."""
    hint: Any = cls
    for key in keys:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(key)
    return hint


def _is_text(hint: Any) -> bool:
    """True for a str field, or a Literal whose choices are all strings: its override value is taken as typed."""
    if typing.get_origin(hint) is typing.Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(hint))
    return hint is str or bool(getattr(hint, "shorthand", ""))  # `generate.prompts=007` is the path 007


def _set_dotted(cls: type, data: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = data
    for depth, key in enumerate(keys[:-1], 1):
        shorthand = getattr(_hint_at(cls, keys[:depth]), "shorthand", "")
        if shorthand and isinstance(node.get(key), str):  # `prompts=p.jsonl prompts.id_field=id`: the path stays
            node[key] = {shorthand: node[key]}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = raw if _is_text(_hint_at(cls, keys)) else _parse_scalar(raw, dotted)


def _parse_scalar(raw: str, dotted: str) -> Any:
    """An override's value as YAML (numbers, lists, booleans); text YAML cannot read, e.g. `{world}/x`, stays text."""
    if raw == "":
        return ""
    try:
        return read_yaml(raw)
    except yaml.YAMLError:
        return raw
    except ConfigError as err:
        raise ConfigError(f"override {dotted}: {err}") from None


def load_config(cls: type, path: str | Path | None, overrides: list[str] = ()) -> Any:
    """Reads a YAML file into dataclass `cls` and applies `key=value` overrides.

    Args:
        cls: the top-level config dataclass.
        path: the YAML file; None starts from the dataclass defaults.
        overrides: strings such as `world.seed=3`; a text field takes the value as typed, any other field's value
            is parsed as YAML.

    Raises:
        ConfigError: naming the file and key that do not fit (and the line of a key given twice).
    """
    data: dict = {}
    if path is not None:
        try:
            data = read_yaml(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from err
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r}: expected key=value")
        key, raw = override.split("=", 1)
        _set_dotted(cls, data, key.strip(), raw.strip())
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        if any(_is_about(str(err), override.split("=", 1)[0].strip()) for override in overrides):
            raise ConfigError(f"{err} (set on the command line)") from err  # not the file's value: do not blame it
        raise ConfigError(f"{path or 'config'}: {err}") from err


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem and where (its own text spans several, with excerpts)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem is None:
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def _is_about(message: str, key: str) -> bool:
    """Whether a refusal from `from_dict` is about the dotted `key` (its value, or the key itself unknown)."""
    if message.startswith((f"{key}:", f"{key}.", f"{key}[")):
        return True
    parts, unknown = key.split("."), message.split(";")[0]
    return any(
        unknown.startswith(f"{'.'.join(parts[:depth])}: unknown key(s)") and repr(parts[depth]) in unknown
        for depth in range(1, len(parts))
    )


def save_config(config: Any, out_dir: str | Path) -> Path:
    """Writes the resolved config as `config.yaml` in `out_dir` (atomically)."""
    path = Path(out_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """Lists (dotted key, default, help) for every field of a config dataclass, nested sections included; a nested
    section shows its own default values (`cache.data.path` is the cache's rows, not the class's empty path)."""
    rows = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if defaults is not None:
            default = getattr(defaults, field.name)
        else:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(hints[field.name]):
            rows += describe(hints[field.name], f"{key}.", default if dataclasses.is_dataclass(default) else None)
            continue
        rows.append((key, repr(default), docs.get(field.name, "")))
    return rows
