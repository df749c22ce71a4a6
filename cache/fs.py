"""Where a cache lies: a local folder (plain paths and `os` calls, as fast as ever) or a folder on any fsspec
filesystem, named by its URL (`memory://...`, `s3://bucket/...`, `gs://...`, `hdfs://...`: whatever fsspec and
its plug-ins reach). A `file://` URL is a local folder.

Reading is all a cache needs from a remote filesystem: `Cache.open`, `verify`, the format readers and the trainer's
reader go through `Place`; builds write local (or shared, mounted) folders only.

`Place.contents` reads a shard's bytes once (a file's, or every file of a folder's) and `sha256_contents` hashes
them as the manifest records them, so that a reader checks exactly the bytes it then parses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2s.errors import CacheMismatch
from w2s.io import sha256_dir, sha256_file


def is_url(location: str | Path) -> bool:
    """True for a URL other than `file://` (a local folder is reached without fsspec)."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local location as a `Path` (`file:///x` is `/x`)."""
    text = str(location)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of `url` and the path on it.

    Raises:
        CacheMismatch: fsspec cannot reach that kind of URL (an unknown protocol, or its package not installed).
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise CacheMismatch(f"{url}: fsspec cannot open this URL: {err}") from None


def local_stat(path: Path) -> tuple[int, int]:
    """Bytes and newest modification time (ns) of a local file, or of every file in a local folder."""
    if not path.is_dir():
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    stats = [f.stat() for f in path.rglob("*") if f.is_file()]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def _newest_ns(fs: Any, paths: list[str]) -> int | None:
    """Newest modification time (ns) of `paths`, or None where the filesystem keeps none."""
    try:
        return max((int(fs.modified(p).timestamp() * 1e9) for p in paths), default=0)
    except (NotImplementedError, AttributeError, KeyError, OSError):
        return None


@dataclass(frozen=True)
class Place:
    """A folder: `root` is a `Path` for a local folder, else the URL (no trailing slash) of a folder on `fs`."""

    root: Path | str
    fs: Any = None
    fs_root: str = ""
    """The folder's path on `fs` (remote only)."""

    @classmethod
    def of(cls, location: str | Path | Place) -> Place:
        if isinstance(location, Place):
            return location
        if not is_url(location):
            return cls(local_path(location))
        url = str(location).rstrip("/")
        fs, path = filesystem(url)
        return cls(url, fs, path.rstrip("/"))

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def join(self, name: str) -> Path | str:
        """Where `name` (relative, `/`-separated) lies: a `Path`, or a URL for a remote folder."""
        return f"{self.root}/{name}" if self.remote else self.root / name

    def _path(self, name: str) -> str:
        return f"{self.fs_root}/{name}" if name else self.fs_root

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self._path(name)) if self.remote else (self.root / name).exists()

    def read_text(self, name: str) -> str:
        if not self.remote:
            return (self.root / name).read_text()
        with self.fs.open(self._path(name), "rb") as handle:
            return handle.read().decode("utf-8")

    def _files(self, name: str) -> list[str]:
        """Every file of `name` on `fs` (itself, for a file), in the order `sha256_dir` hashes them."""
        path = self._path(name)
        if not self.fs.isdir(path):
            return [path]
        return sorted(self.fs.find(path), key=lambda p: p[len(path) + 1 :].split("/"))

    def stat(self, name: str) -> tuple[int, int | None]:
        """Bytes and newest modification time (ns; None where the filesystem keeps none) of a file, or of every file
        in a folder."""
        if not self.remote:
            return local_stat(self.root / name)
        files = self._files(name)
        return sum(self.fs.size(p) for p in files), _newest_ns(self.fs, files)

    def sha256(self, name: str) -> str:
        """sha256 of a file, or of a folder as `w2s.io.sha256_dir(folder, "**/*")` computes it."""
        if not self.remote:
            path = self.root / name
            return sha256_dir(path, "**/*") if path.is_dir() else sha256_file(path)
        path = self._path(name)
        if not self.fs.isdir(path):
            return _sha256_remote(self.fs, path)
        digest = hashlib.sha256()
        for file in self._files(name):
            digest.update(file[len(path) + 1 :].encode())
            digest.update(_sha256_remote(self.fs, file).encode())
        return digest.hexdigest()

    def contents(self, name: str) -> bytes | dict[str, bytes]:
        """The bytes of a file, or of every file of a folder by `/`-separated name within it, in the order
        `sha256_contents` hashes them (one read of each file, for hashing and parsing alike).

        Raises:
            FileNotFoundError: nothing is stored under `name`.
        """
        if not self.remote:
            path = self.root / name
            if not path.is_dir():
                return path.read_bytes()
            files = sorted((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).parts)
            return {f.relative_to(path).as_posix(): f.read_bytes() for f in files}
        path = self._path(name)
        if not self.fs.isdir(path):
            return self.fs.cat_file(path)
        files = self._files(name)
        data = self.fs.cat(files)
        return {file[len(path) + 1 :]: data[file] for file in files}

    def local_copy(self, name: str, into: Path) -> Path:
        """`name` as a local path: itself for a local folder, else copied under `into` first."""
        if not self.remote:
            return self.root / name
        target = into / Path(name).name
        self.fs.get(self._path(name), str(target), recursive=True)
        return target


def sha256_contents(contents: bytes | dict[str, bytes]) -> str:
    """sha256 of what `Place.contents` read, as the manifest records it: a file's digest, or a folder's as
    `w2s.io.sha256_dir(folder, "**/*")` computes it (each name, then its file's hex digest, in sorted order)."""
    if isinstance(contents, bytes):
        return hashlib.sha256(contents).hexdigest()
    digest = hashlib.sha256()
    for name, data in contents.items():
        digest.update(name.encode())
        digest.update(hashlib.sha256(data).hexdigest().encode())
    return digest.hexdigest()


def _sha256_remote(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
