"""A sweep's folder under a results root: its layout, the checks before anything is written,
and what an earlier run left there.

    <root>/<sweep>/sweep.yaml                     the sweep file as given
    <root>/<sweep>/sweep_base.txt                 the folder it was given in (its own modules'
                                                  relative paths are taken from there)
    <root>/<sweep>/driver.lock                    the running driver (see ibray.driver_lock)
    <root>/<sweep>/trials/<trial_id>/{mi,metrics,trial.json,checkpoint.pt}   each trial's rows,
                                                  status and latest checkpoint
    <root>/<sweep>/tune/                          Tune's experiment state and trial checkpoints

`root` is a local path or any filesystem URI pyarrow resolves (s3://, gs://, file://).
Everything a sweep writes lies under its own folder: two sweeps of different names under one
root never touch each other's files, and only a folder holding a sweep.yaml is ever deleted.
Knows nothing of Ray.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import yaml

from ibray.data_names import data_file, dataset_label
from ibray.driver_lock import LOCK_FILE
from ibray.errors import TrialStateError
from ibray.records import read_trial_info
from ibray.storage import is_uri, join, read_text, resolve, write_text_atomic
from ibray.sweep import SweepError, SweepSpec, parse_sweep

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "sweep_base.txt"
TRIALS = "trials"
TUNE = "tune"
PSEUDO_FILESYSTEMS = ("/proc", "/sys")


def sweep_folder(spec: SweepSpec, root: str) -> str:
    """<root>/<name>: a URI, or an absolute local path (Tune wants one)."""
    if is_uri(root):
        return str(join(root, spec.name))
    _, absolute = resolve(root)
    return str(join(absolute, spec.name))


def write_sweep_file(spec: SweepSpec, folder: str) -> None:
    """The sweep file as given, and the folder it was given in, into the sweep's folder."""
    write_text_atomic(spec.text, join(folder, SWEEP_FILE))
    if spec.base is not None:
        write_text_atomic(spec.base + "\n", join(folder, BASE_FILE))


def read_sweep_file(folder: str | Path, base: str | None = None) -> SweepSpec:
    """A sweep folder's stored sweep file, parsed; an own module's relative path taken from
    `base`, by default the folder the sweep file was given in (as the run recorded it)."""
    if base is None:
        recorded = read_text(join(folder, BASE_FILE))
        base = recorded.strip() if recorded and recorded.strip() else None
    source = f"{folder}/{SWEEP_FILE}"
    return parse_sweep(read_text(join(folder, SWEEP_FILE)) or "", source, Path(str(folder)).name, base=base)


def trial_infos(spec: SweepSpec, folder: str) -> dict[str, dict | None]:
    """trial id -> its trial.json, None when it has none or a damaged one (it runs again)."""
    infos = {}
    for trial in spec.trials:
        try:
            infos[trial.trial_id()] = read_trial_info(join(folder, TRIALS, trial.trial_id()))
        except TrialStateError:
            infos[trial.trial_id()] = None
    return infos


def changed_keys(earlier: str, now: str) -> str:
    """The keys whose values differ between two sweep files' texts, for a message."""
    try:
        before, after = yaml.safe_load(earlier) or {}, yaml.safe_load(now) or {}
    except yaml.YAMLError:
        return "its stored copy is not readable YAML"
    if not isinstance(before, dict) or not isinstance(after, dict):
        return "its stored copy is not a mapping"
    keys = sorted({*before, *after} - {"name"}, key=str)
    changed = [str(key) for key in keys if before.get(key, "(unset)") != after.get(key, "(unset)")]
    return f"keys changed: {', '.join(changed)}" if changed else "the same keys, read otherwise"


def trial_statuses(spec: SweepSpec, folder: str) -> dict[str, str]:
    """trial id -> status in its trial.json ('complete', 'running'), 'absent' when none."""
    return {t: (info or {}).get("status", "absent") for t, info in trial_infos(spec, folder).items()}


def check_results_folder(folder: str) -> None:
    """Refuse a sweep folder that cannot be written: below a regular file, in /proc or /sys,
    on a read-only or foreign disk, or (for a URI) on a filesystem pyarrow cannot reach."""
    if is_uri(folder):
        try:
            filesystem, inner = resolve(folder)
            parent = filesystem.get_file_info(inner.rsplit("/", 1)[0])
        except Exception as error:  # pyarrow raises several types for a bad URI or credentials
            raise SweepError(
                f"results root {folder.rsplit('/', 1)[0]} cannot be reached ({type(error).__name__}: {error})"
            ) from error
        if parent.type == pafs.FileType.File:
            raise SweepError(f"results root {parent.path} is a file, not a folder; pass another --results")
        return
    path = Path(os.path.realpath(folder))
    for pseudo in PSEUDO_FILESYSTEMS:
        if path == Path(pseudo) or Path(pseudo) in path.parents:
            raise SweepError(
                f"results root {path.parent} is under {pseudo}, the kernel's, not a disk; pass another --results"
            )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SweepError(f"results root {path.parent}: {existing} is a file, not a folder; pass another --results")
    try:  # as root os.access says yes to nearly everything: only a write tells
        handle, probe = tempfile.mkstemp(prefix=".ibray-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise SweepError(
            f"results root {path.parent} is not writable ({existing}: {error.strerror}); pass another --results"
        ) from error


def check_existing(spec: SweepSpec, folder: str, resume: bool, overwrite: bool) -> dict[str, str] | None:
    """The statuses of an earlier run of this sweep in `folder`, None when there is none ({}
    under `overwrite`, which replaces whatever sweep the folder holds)."""
    stored = read_text(join(folder, SWEEP_FILE))
    if stored is None:
        filesystem, inner = resolve(folder)
        entries = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
        if any(e.base_name != LOCK_FILE for e in entries):
            raise SweepError(
                f"{folder} exists but holds no {SWEEP_FILE}, so it is not a sweep's folder; "
                f"pick another results root or sweep name"
            )
        return None
    if overwrite:
        return {}
    check_data_unchanged(spec, folder)  # before the grids are compared: it says what changed
    try:  # its own modules taken from where this sweep file is now (their hashes say if they changed)
        earlier = parse_sweep(stored, f"{folder}/{SWEEP_FILE}", spec.name, base=spec.base)
        same = earlier.param_space() == spec.param_space()
    except SweepError:
        earlier, same = None, False
    if not same:
        name = earlier.name if earlier is not None else spec.name
        raise SweepError(
            f"{folder} holds sweep {name!r} from a different sweep file ({changed_keys(stored, spec.text)}); "
            f"give this one another name (the `name:` key), another --results root, or pass --overwrite to replace it"
        )
    statuses = trial_statuses(spec, folder)
    done = sum(s == "complete" for s in statuses.values())
    if done < len(statuses) and not resume:
        raise SweepError(
            f"{folder} holds an unfinished run of sweep {spec.name!r} ({done}/{len(statuses)} trials "
            f"complete); pass --resume to finish it or --overwrite to start over"
        )
    return statuses


def clear_sweep_folder(folder: str) -> None:
    """Delete an earlier run (only ever a sweep's own folder), keeping this driver's lock."""
    filesystem, inner = resolve(folder)
    for entry in filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
        if entry.base_name == LOCK_FILE:
            continue
        if entry.type == pafs.FileType.Directory:
            filesystem.delete_dir(entry.path)
        else:
            filesystem.delete_file(entry.path)


def check_data_unchanged(spec: SweepSpec, folder: str) -> None:
    """Refuse to continue a sweep in `folder` (a path or URI) whose trials were pinned to data
    files other than the spec's: a file that changed (or moved) since the sweep started would
    give new trials beside the old ones, two versions of the data in one sweep.

    Reads every `<folder>/trials/*/trial.json`; raises SweepError naming the file, both hashes
    and the fix. Built-in data sets are left alone (their downloads are checksummed)."""
    ours = {v for v in spec._values("dataset") if data_file(v) is not None}
    filesystem, inner = resolve(join(folder, "trials"))
    entries = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    for entry in sorted(entries, key=lambda e: e.base_name):
        if entry.type != pafs.FileType.Directory:
            continue
        try:
            info = read_trial_info(join(folder, "trials", entry.base_name))
            dataset = (info.get("config") or {}).get("dataset") if info else None
        except (TrialStateError, AttributeError):
            continue  # a damaged record: the trial runs again and rewrites it
        old = data_file(dataset)
        if old is None or old.sha256 is None or dataset in ours:
            continue
        now = next((data_file(v) for v in sorted(ours) if data_file(v).path == old.path), None)
        found = (
            f"it now has SHA-256 {now.sha256[:12]}..."
            if now
            else f"this run reads {', '.join(sorted(dataset_label(v) for v in ours)) or 'no data file'} instead"
        )
        raise SweepError(
            f"{folder}: sweep {spec.name!r} started on the data file {old.path} with SHA-256 {old.sha256[:12]}... "
            f"(trial {entry.base_name}), but {found}: the file changed or moved since; put that version back at "
            f"that path, or pass --overwrite to start the sweep over on the file as it is now"
        )
