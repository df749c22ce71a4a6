"""`Cache`: a finished logit cache as one object. Every reader of a cache (the trainer, `inspect`, `verify`)
goes through it; it reads `manifest.json` once, and reaches shards only through the format registry.

    cache = Cache.open("runs/tiny/cache")      # reads and checks the manifest (or "s3://bucket/cache", any fsspec URL)
    cache.formats                              # ('parquet', 'zarr')
    shard = cache.read_shard(0, "zarr")        # a ShardData
    problems = cache.verify()                  # [] when sound: every file's size, sha256 and row ids
    problems = cache.verify("sample")          # sizes, plus sha256 and row ids of a random sample of shards

Verification comes at three levels (`VerifyLevel`). `full` re-hashes every shard file of every format and reads
its row ids (`w2s verify`, `w2s inspect`, a rerun of `w2s cache`). `sizes` checks the manifest (read by `open`),
every file's size and the row ranges, a stat per file; `sample` adds the full check of `SAMPLE_SHARDS` shards
picked at random. At both cheap levels, a file modified after `manifest.json` was written (its mtime is newer)
gets the full check too: a shard rewritten in place with the same size is caught, whatever the sample. The
trainer starts at `sample` (`train.verify_cache`) and checks each shard's row ids as it loads it.

Whatever the start-up level, every shard read through `read_shard` (the trainer's reader, `first_rows`, `inspect`)
is checked as it is read: its bytes are read once, hashed, compared with the manifest's sha256 and only then
parsed (from those same bytes, so nothing is read twice and nothing unhashed is parsed). A damaged shard stops
the reader before any of its rows reach a batch. This reads the whole file even when only some columns are
wanted; `benchmarks/read_hashing.py` measures what that costs a training step.

`open` also refuses a manifest that disagrees with itself (`w2s.cache.manifest.check_consistency`).

A cache on another filesystem is opened by its URL (`w2s.cache.fs`): files are then read through fsspec, and a
file whose filesystem keeps no modification time always gets the full check.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from w2s.cache.formats import get_format
from w2s.cache.fs import Place, sha256_contents
from w2s.cache.manifest import MANIFEST, check_entry, load_manifest
from w2s.errors import CacheMismatch
from w2s.schemas.cache import Layout, ShardData

VerifyLevel = Literal["sizes", "sample", "full"]
SAMPLE_SHARDS = 2
"""Shards whose files a `sample` verification re-hashes (picked afresh at each check, so repeated starts cover
the cache)."""


@dataclass(frozen=True)
class Cache:
    """A finished cache folder and its manifest (read once, by `open`)."""

    path: Path | str
    """The folder: a `Path`, or the URL of a folder on another filesystem (`w2s.cache.fs`)."""
    manifest: dict
    manifest_mtime_ns: int | None = 0
    """When `manifest.json` was written: shard files modified later are re-hashed by the cheap checks (None: the
    filesystem keeps no time, and every file is)."""

    @classmethod
    def open(cls, cache_dir: str | Path) -> Cache:
        """Reads and checks `manifest.json`; `cache_dir` is a local folder or the URL of one on any fsspec filesystem.

        Raises:
            CacheMismatch: no manifest, an unreadable one, a schema version this w2s does not read, a manifest that
                disagrees with itself (totals, shard indices, row ranges, dataset rows), or a URL fsspec cannot open.
        """
        place = Place.of(cache_dir)
        manifest = load_manifest(place)
        cache = cls(place.root, manifest, place.stat(MANIFEST)[1])
        cache.__dict__["place"] = place  # the filesystem found once
        return cache

    @cached_property
    def place(self) -> Place:
        """Where the folder lies, and how its files are reached."""
        return Place.of(self.path)

    @property
    def layout(self) -> Layout:
        """Which store the cache is, which fields it holds and how they are stored (schema 1: a full store)."""
        return Layout.from_manifest(self.manifest)

    @property
    def provenance(self) -> dict:
        """What made the cache: models, tokenizer, dataset, settings, code (see `w2s.cache.build`)."""
        return self.manifest["provenance"]

    @property
    def totals(self) -> dict:
        """rows, tokens, response_tokens and bytes over all shards."""
        return self.manifest["totals"]

    @property
    def shards(self) -> list[dict]:
        """The shards' manifest entries, in index order: index, row_start, rows, tokens, files per format."""
        return self.manifest["shards"]

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats every shard is stored in, in the order they were written (the first is the default)."""
        if not self.shards:
            return ()
        return tuple(name for name in self.shards[0]["files"] if all(name in s["files"] for s in self.shards))

    def require_format(self, fmt: str | None) -> str:
        """`fmt` (None: the default format) when every shard is stored in it.

        Raises:
            CacheMismatch: the cache has no `fmt` store.
        """
        fmt = fmt or next(iter(self.formats), None)
        if fmt is None or fmt not in self.formats:
            built = self.manifest.get("config", {}).get("format")
            raise CacheMismatch(
                f"{self.path}: the cache has no {fmt or 'shard'} store (it was built with format={built})"
            )
        return fmt

    def shard_path(self, index: int, fmt: str) -> Path | str:
        """Where shard `index` is stored in format `fmt` (a URL for a cache on another filesystem)."""
        return self.place.join(self.shards[index]["files"][fmt]["name"])

    def read_shard(self, index: int, fmt: str | None = None, columns: Sequence[str] | None = None) -> ShardData:
        """Shard `index` (position in `shards`) in format `fmt` (None: the default), only `columns` when given.

        Its bytes are read once, hashed and compared with the manifest's sha256 before they are parsed, whatever
        verification ran before: a shard that differs from the manifest is never returned (see the module's
        docstring). A format without `parse` (a plug-in that reads only by path) is hashed, then read.

        Raises:
            CacheMismatch: the shard's file (or a file of its folder) is missing or differs from the manifest.
        """
        fmt = self.require_format(fmt)
        entry, reader = self.shards[index]["files"][fmt], get_format(fmt)
        parse = getattr(reader, "parse", None)
        try:
            if parse is None:
                self._require_digest(entry, self.place.sha256(entry["name"]))
                return self._finite(entry, reader.read(self.shard_path(index, fmt), columns))
            contents = self.place.contents(entry["name"])
        except FileNotFoundError:
            raise self._damaged(entry, "missing") from None
        self._require_digest(entry, sha256_contents(contents))
        return self._finite(entry, parse(contents, columns))

    def _finite(self, entry: dict, data: ShardData) -> ShardData:
        """`data`, refused when a value read is not finite: a target or reference of NaN would train as a loss of
        NaN (blamed on the learning rate), and statistics of it mean nothing."""
        where = data.nonfinite()
        if where is None:
            return data
        raise CacheMismatch(
            f"{self.place.join(entry['name'])}: {where}; this w2s refuses such values when it builds a cache: "
            f"rebuild {self.path} with `w2s cache` into a new folder"
        )

    def _require_digest(self, entry: dict, digest: str) -> None:
        """Refuses what was read for `entry` unless its sha256 is the manifest's."""
        if digest != entry["sha256"]:
            raise self._damaged(entry, "sha256 differs from the manifest")

    def _damaged(self, entry: dict, what: str) -> CacheMismatch:
        """The one-line refusal of a damaged shard file, naming it and saying how to repair the cache."""
        return CacheMismatch(
            f"{self.place.join(entry['name'])}: {what}; run `w2s verify {self.path}` and rebuild the cache with "
            "`w2s cache` (damaged shards are redone)"
        )

    def first_rows(self, count: int) -> list[tuple[int, list[int]]]:
        """(row_id, input_ids) of the first `count` rows, in row order (for the trainer's re-tokenise check)."""
        rows: list[tuple[int, list[int]]] = []
        for index in range(len(self.shards)):
            if len(rows) >= count:
                break
            shard = self.read_shard(index, columns=["row_id", "input_ids"])
            rows += [(int(shard.row_id[i]), shard.sequence(i).tolist()) for i in range(shard.num_rows)]
        return rows[:count]

    def verify(self, level: VerifyLevel = "full", sample: int = SAMPLE_SHARDS, seed: int | None = None) -> list[str]:
        """Checks the shard files at `level` (see the module's docstring) and the row ranges and totals.

        Args:
            level: `full` (every file hashed and its row ids read), `sample` or `sizes`.
            sample: shards fully checked at level `sample`.
            seed: picks the sample (None: a fresh random one).

        Returns:
            One line per problem; empty when the cache is sound.
        """
        positions = range(len(self.shards))
        if level == "full":
            deep = set(positions)
        else:
            count = min(sample, len(positions)) if level == "sample" else 0
            deep = set(random.Random(seed).sample(positions, count))
        problems: list[str] = []
        next_row = 0
        for position, shard in enumerate(self.shards):
            for fmt, entry in shard["files"].items():
                problems += self._check_file(shard, fmt, entry, position in deep)
            if shard["row_start"] != next_row:
                problems.append(f"shard {shard['index']}: starts at row {shard['row_start']}, expected {next_row}")
            next_row = shard["row_start"] + shard["rows"]
        if next_row != self.totals["rows"]:
            problems.append(f"shards hold {next_row} rows, manifest totals say {self.totals['rows']}")
        return problems + self.stray_entries()

    def stray_entries(self) -> list[str]:
        """Entries of the shard folders that the manifest does not list: a plain `pyarrow.dataset` (or polars,
        duckdb) reader of `<cache>/parquet` would read them as rows of the cache (local caches only)."""
        if self.place.remote:
            return []
        listed = {entry["name"] for shard in self.shards for entry in shard["files"].values()}
        problems = []
        for fmt in self.formats:
            folder = self.place.root / fmt
            for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
                name = f"{fmt}/{entry.name}"
                if name not in listed and not entry.name.startswith("."):
                    problems.append(f"{self.place.join(name)}: not in the manifest (readers of {folder} would read it)")
        return problems

    def _check_file(self, shard: dict, fmt: str, entry: dict, deep: bool) -> list[str]:
        """Problems of one shard file: its recorded size; when `deep` or modified after the manifest, also its
        checksum and its row ids, read by its format."""
        path = self.place.join(entry["name"])
        if not self.place.exists(entry["name"]):
            return [f"{path}: missing"]
        size, modified = self.place.stat(entry["name"])
        if size != entry["bytes"]:
            return [f"{path}: {size} bytes, manifest says {entry['bytes']}"]
        known = modified is not None and self.manifest_mtime_ns is not None
        if not deep and known and modified <= self.manifest_mtime_ns:
            return []
        reader = get_format(fmt)
        parse = getattr(reader, "parse", None)
        if parse is None:  # a plug-in format that reads only by path: hashed, then read
            problem = check_entry(self.place, entry)
            contents = None
        else:  # one read of the bytes, hashed, then parsed from memory
            contents = self.place.contents(entry["name"])
            digest = sha256_contents(contents)
            problem = f"{path}: sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}..."
            problem = problem if digest != entry["sha256"] else None
        if problem:
            return [problem]
        try:  # every column: the row ids against the manifest, the values for NaN and infinity
            data = reader.read(path, None) if contents is None else parse(contents, None)
        except Exception as err:  # any reader failure is one more line of the report, not a crash
            return [f"{path}: unreadable as {fmt}: {type(err).__name__}: {err}"]
        where = data.nonfinite()
        return self.check_row_ids(shard, path, data.row_id.tolist()) + ([f"{path}: {where}"] if where else [])

    @staticmethod
    def check_row_ids(shard: dict, path: Path | str, row_ids: list[int]) -> list[str]:
        """[] when `row_ids` (read from `path`) are the rows the shard's manifest entry says, else the problem."""
        expected = list(range(shard["row_start"], shard["row_start"] + shard["rows"]))
        if row_ids != expected:
            last = expected[-1] if expected else ""
            return [f"{path}: row ids {row_ids[:3]}... do not match rows {shard['row_start']}..{last}"]
        return []


def verify_cache(cache_dir: str | Path) -> list[str]:
    """`Cache.open(cache_dir).verify()`, with a manifest that cannot be opened reported as the one problem."""
    try:
        return Cache.open(cache_dir).verify()
    except CacheMismatch as err:
        return [str(err)]
