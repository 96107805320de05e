"""Where results live: local paths and filesystem URIs (s3://, gs://, file://, anything pyarrow
resolves) behind one set of helpers, and writes that leave a file complete or absent.

Local files are written to a temporary name beside them, flushed and renamed; on object stores
a single PUT is atomic, so the final key is written directly, from bytes serialized in memory.
Used by the records, the data downloads, the sweep folder, the driver lock and the launcher.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(location: str | os.PathLike) -> bool:
    """True for a filesystem URI (s3://bucket/x, file:///tmp/x), False for a plain path."""
    return isinstance(location, str) and "://" in location


def join(location: str | os.PathLike, *names: str) -> str | Path:
    """`location`/names...: a URI stays a string, a path stays a Path."""
    if is_uri(location):
        return "/".join([location.rstrip("/"), *names])
    return Path(location).joinpath(*names)


@functools.lru_cache(maxsize=64)
def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    # Cached: building an S3 or GCS filesystem may cost a network round trip.
    return pafs.FileSystem.from_uri(uri)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path on it) of a local path or a URI."""
    if is_uri(location):
        return _from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).absolute())


def write_bytes_atomic(data: bytes, uri: str) -> None:
    """Write `data` at a URI so that it is absent or complete: a local URI through a temporary
    name and a rename, an object store in one PUT (atomic there, and there is no rename)."""
    filesystem, path = resolve(uri)
    parent, name = path.rsplit("/", 1)
    filesystem.create_dir(parent, recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):  # a local URI: rename is atomic
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        with filesystem.open_output_stream(tmp) as sink:
            sink.write(data)
        filesystem.move(tmp, path)
    else:  # object stores: one PUT is atomic, and there is no rename
        with filesystem.open_output_stream(path) as sink:
            sink.write(data)


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Make the local file `path` appear complete or not at all: `write` fills a temporary file
    beside it, which is flushed to disk and renamed over `path`; on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Replace a small text file (e.g. trial.json) at once: readers see the old or the new."""
    if is_uri(path):
        write_bytes_atomic(text.encode(), path)
        return
    replace_atomically(Path(path), lambda tmp: tmp.write_text(text))


def read_text(path: str | Path) -> str | None:
    """The text of a small file, or None when it does not exist."""
    if not is_uri(path):
        return Path(path).read_text() if Path(path).exists() else None
    filesystem, inner = resolve(path)
    if filesystem.get_file_info(inner).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(inner) as source:
        return source.read().decode()
