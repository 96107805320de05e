"""Where the analysis writes: files written atomically, and output paths checked once, before
anything is built: one that cannot be written, or one that would land among the results being
read (a report or CSV written over a Parquet part or trial.json), is refused with one line.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path


class OutputError(Exception):
    """An output path the report cannot write; the message names it and what to give instead."""


def write_atomically(path: Path, data: bytes) -> None:
    """Make `path` hold `data`, or leave it as it was: written to a temporary file beside it,
    flushed to disk, then renamed over it. A failure (a full disk) raises OutputError naming
    the file, with the temporary file removed and an earlier file at `path` untouched."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(
            f"{path}: cannot be written ({error.strerror or error}); nothing was changed there, free space or pick another path"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def refuse_inside_inputs(option: str, given: str, inputs: list[str], suffix: str = ".html") -> None:
    """Refuse an output path that is one of the `inputs` or lies inside an input folder."""
    target = Path(os.path.realpath(given))
    for source in inputs:
        if "://" in str(source):  # read from a remote store: a local output cannot be in it
            continue
        folder = Path(os.path.realpath(source))
        if target == folder or folder in target.parents:
            raise OutputError(
                f"{option} {given}: is inside the results {source} that are read, and would replace or add "
                f"files among them; write it outside, e.g. {option} {Path(source).name or 'results'}-report" + suffix
            )


def nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def check_writable_place(option: str, given: str, folder: Path) -> None:
    if not folder.is_dir():
        raise OutputError(
            f"{option} {given}: {folder} is a file, so nothing can be made under it; pick another {option}"
        )
    try:  # a real attempt, not os.access: that says yes to root everywhere, /proc included
        os.rmdir(tempfile.mkdtemp(prefix=".ibray-probe-", dir=folder))
    except OSError as error:
        raise OutputError(
            f"{option} {given}: cannot write in {folder} ({error.strerror or error}); pick another {option}"
        ) from None
