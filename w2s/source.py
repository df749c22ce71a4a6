"""A data source: where a dataset lives and which of its fields hold what. The one section that `cache.data`,
`generate.prompts`, `export.data` and the prompt tasks' `prompts` argument share, so a prompt set or a training
set is described the same way wherever it is read (`w2s.data.load_rows` reads it).

A plain string stands for a source's path with every field at its default (`generate.prompts=test.jsonl`).
This module imports no data or model library: configs are validated against it at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from w2s.config import ConfigError, from_dict, require


@dataclass
class DataSource:
    """Where a dataset lives and which fields hold what."""

    shorthand: ClassVar[str] = "path"
    """A plain string given for a source sets this field (w2s.config reads it)."""

    path: str = ""
    """Local jsonl/json/parquet/arrow file (or a folder of them), or a hub dataset name when online."""
    split: str = "train"
    """Split of a hub dataset (local files load as 'train')."""
    prompt_field: str = "prompt"
    """Field holding the prompt text (ignored when messages_field is set); export reads the document here."""
    response_field: str = "response"
    """Field holding the response text (the cache's scored response; export's summary); prompt sets ignore it."""
    messages_field: str = ""
    """Field holding chat messages: the last (assistant) one is the response for the cache and the reference for
    a prompt set; the others are the prompt."""
    id_field: str = "example_id"
    """Field holding a unique example id; rows without it get 'row-<n>'."""
    reference_field: str = ""
    """Prompt sets: a field holding a reference response, shown in reports and never given to a system."""

    def __post_init__(self) -> None:
        require(bool(self.path.strip()), "*.path", "must name a file, folder or hub dataset, got an empty path")
        for name in ("split", "prompt_field", "response_field", "id_field"):
            value = getattr(self, name)
            require(bool(value.strip()), f"*.{name}", "must not be empty")

    def field_names(self) -> dict[str, str]:
        """The four fields a training row is read by, as the cache's provenance records them."""
        return {name: getattr(self, name) for name in ("prompt_field", "response_field", "messages_field", "id_field")}


FLAT_KEYS = ("split", "prompt_field", "response_field", "messages_field", "id_field")
"""A source's keys that older configs wrote straight into their section (`cache.split`)."""


def moved_keys(section: str, old_path_key: str = "", renamed: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each key of an older, flat layout lives now under `section` (for a config class's `moved`): its
    path key (`dataset`) becomes `section.path`, each of FLAT_KEYS `section.<key>`, `renamed` old -> new key."""
    moved = {key: f"{section}.{key}" for key in FLAT_KEYS}
    moved.update({old: f"{section}.{new}" for old, new in (renamed or {}).items()})
    return moved | ({old_path_key: f"{section}.path"} if old_path_key else {})


def as_source(value: str | Mapping[str, Any] | DataSource, where: str, default: DataSource | None = None) -> DataSource:
    """A source from a path or a mapping of its fields (a task's `prompts`; a config built in Python with
    `prompts="test.jsonl"`), refused naming `where`; the fields left out take `default`'s values."""
    if isinstance(value, DataSource):
        return value
    if isinstance(value, str):
        value = {DataSource.shorthand: value}
    if not isinstance(value, Mapping):
        known = [field.name for field in fields(DataSource)]
        raise ConfigError(f"{where}: must be a path or a mapping of {known}, got a {type(value).__name__}")
    return from_dict(DataSource, {**(asdict(default) if default else {}), **value}, where)
