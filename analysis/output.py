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


def check_report_outputs(
    output: str, png_dir: str | None = None, inputs: list[str] = (), svg_dir: str | None = None, option: str = "-o"
) -> None:
    """Refuse a report's -o, --png and --svg paths that cannot be written, before the report is
    built: either all can be written or nothing is (the HTML would otherwise be written before
    a bad --png fails); and any that is one of the `inputs` or lies inside an input folder: the
    report would replace results it reads (a Parquet part, trial.json) or add files among them.
    Each folder where something would be made is probed once, by a real attempt. `option`: the
    HTML file's option, as messages name it (`ibray sweep --report`'s)."""
    out = Path(output)
    folders = {"--png": png_dir, "--svg": svg_dir}
    for name, given in ((option, output), *folders.items()):
        if given is not None:
            refuse_inside_inputs(name, given, inputs, ".html" if name == option else f"-{name[2:]}")
    probed: set[Path] = set()

    def probe(name: str, given: str, folder: Path) -> None:
        if folder.absolute() not in probed:
            check_writable_place(name, given, folder)
            probed.add(folder.absolute())

    try:
        if out.is_dir() or output.endswith(("/", os.sep)):
            raise OutputError(
                f"{option} {output}: names a folder; give the HTML file to write, e.g. {out / 'report.html'}"
            )
        probe(option, output, nearest_existing(out.absolute().parent))
        if os.path.lexists(out) and not os.access(out, os.W_OK):
            raise OutputError(f"{option} {output}: the file is read-only; pick another {option}")
        for name, given in folders.items():
            if given is None:
                continue
            folder = Path(given)
            kind = name[2:].upper()
            if folder.absolute() == out.absolute() or out.absolute() in folder.absolute().parents:
                raise OutputError(f"{name} {given}: the HTML file goes to {output}; give {name} a folder of its own")
            if os.path.lexists(folder) and not folder.is_dir():
                raise OutputError(f"{name} {given}: is a file, not a folder; give a folder for the {kind} files")
            probe(name, given, folder if folder.is_dir() else nearest_existing(folder.absolute()))
    except OSError as error:
        raise OutputError(
            f"{error.filename or output}: cannot be read ({error.strerror or error}); pick another output path"
        ) from None
