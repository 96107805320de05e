"""`ibray verify`: every row a trial should have, exactly once, and nothing else.

For every trial folder (trial.json beside mi/ and metrics/) at or below the paths given:

- each seed's kept attempt (trial.json's `restarts`) has one metrics row per measured
  (phase, epoch) and one MI row per measured (phase, epoch), layer and estimator;
- there are no rows of discarded attempts (a `restarts` other than the kept one), of seeds the
  trial does not train, of layers or estimators it does not measure, or of epochs off its
  measuring grid;
- no part file is newer than the last write trial.json records;
- trial.json agrees with the rows: 'complete' exactly when every row is there.

The measuring grid follows from the config alone (`TrialConfig.measured_at`, which the trainer
measures by). A trial still running is checked as far as its slowest seed has gone and reported
as unfinished: verify passes only on complete results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ibray.config import TrialConfig, layer_count
from ibray.errors import TrialStateError, VerifyError
from ibray.records import TABLES, list_parts, part_write, read_trial_info
from ibray.storage import is_uri, join, resolve
from ibray.sweep_folder import SWEEP_FILE, TRIALS, TUNE, read_sweep_file, trial_statuses

MI_COLUMNS = ["seed", "restarts", "phase", "epoch", "estimator", "layer"]
METRICS_COLUMNS = ["seed", "restarts", "phase", "epoch"]


def measured_epochs(config: TrialConfig, up_to: int | None = None) -> list[tuple[str, int]]:
    """The (phase, epoch) at which every seed of a trial is measured (config.measured_at), in
    order, up to `up_to` completed epochs (default: the whole run)."""
    total = config.prefit_epochs + config.epochs
    last = total if up_to is None else min(up_to, total)
    return [config.phase_epoch(done) for done in range(last + 1) if config.measured_at(done)]


@dataclass
class TrialCheck:
    """What verify found in one trial folder."""

    path: str
    trial: str
    status: str  # trial.json's: 'complete', 'running', ...
    seeds: int = 0
    epochs: int = 0  # measured (phase, epoch) points per seed, whole run
    layers: int = 0
    estimators: int = 0
    restarted: dict[int, int] = field(default_factory=dict)  # seed -> kept attempt, when > 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.status == "complete"

    def line(self) -> str:
        if self.problems:
            return f"FAILED   {self.trial} ({self.path}): " + "; ".join(self.problems)
        shape = (
            f"{self.seeds} seed(s) x {self.epochs} measured epochs x {self.layers} layers x "
            f"{self.estimators} estimator(s), every row once"
        )
        restarted = f"; kept reruns of seeds {_seeds_text(self.restarted)}" if self.restarted else ""
        if self.status != "complete":
            return f"UNFINISHED {self.trial} ({self.path}): status {self.status!r}; rows so far consistent{restarted}"
        return f"ok       {self.trial}: {shape}{restarted}"


def _seeds_text(restarted: dict[int, int]) -> str:
    return ", ".join(f"{seed} (attempt {attempt})" for seed, attempt in sorted(restarted.items()))


def _epochs_text(points: pl.DataFrame) -> str:
    """'train 405..800 (80 epochs)' for the (phase, epoch) rows of `points`."""
    parts = []
    for phase, epochs in points.group_by("phase", maintain_order=True).agg(pl.col("epoch").unique().sort()).rows():
        span = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]}..{epochs[-1]}"
        parts.append(f"{phase} {span} ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''})")
    return ", ".join(parts)


def _schema_problem(table: str, name: str, schema: pa.Schema) -> str | None:
    """How a part's columns differ from the declared schema (records.TABLES), or None."""
    declared = TABLES[table]
    missing = [f.name for f in declared if f.name not in schema.names]
    extra = [name for name in schema.names if name not in declared.names]
    retyped = [
        f"{f.name} ({schema.field(f.name).type}, declared {f.type})"
        for f in declared
        if f.name in schema.names and not schema.field(f.name).type.equals(f.type)
    ]
    found = [f"missing {', '.join(missing)}"] * bool(missing) + [f"extra {', '.join(extra)}"] * bool(extra)
    found += [f"other types: {', '.join(retyped)}"] * bool(retyped)
    return f"{table}: {name}: columns differ from the declared schema: {'; '.join(found)}" if found else None


def _read(
    folder: str | Path, table: str, columns: list[str], last_write: int | None = None
) -> tuple[pl.DataFrame, list, list[str]]:
    """The key columns of a table's parts, the parts, and the parts' schema problems. Parts
    newer than `last_write` (a write in progress) are listed but not read."""
    parts = list_parts(join(folder, table))
    tables, problems = [], []
    for part in parts:
        name = str(part).rsplit("/", 1)[-1]
        if last_write is not None and (part_write(name) or 0) > last_write:
            continue
        filesystem, inner = resolve(part) if is_uri(part) else (None, part)
        problem = _schema_problem(table, name, pq.read_schema(inner, filesystem=filesystem))
        if problem:
            problems.append(problem)
            continue
        tables.append(pq.read_table(inner, columns=columns, filesystem=filesystem))
    if problems:
        return pl.DataFrame(), parts, problems
    if not tables:
        schema = TABLES[table]
        return pl.from_arrow(pa.schema([schema.field(c) for c in columns]).empty_table()), parts, []
    return pl.from_arrow(pa.concat_tables(tables)), parts, []


def verify_trial(folder: str | Path) -> TrialCheck:
    """Check one trial folder; problems are collected, never raised."""
    folder_text = str(folder)
    try:
        info = read_trial_info(folder)
        config = TrialConfig.from_dict(info["config"])
    except (TrialStateError, KeyError, TypeError, ValueError) as error:
        return TrialCheck(folder_text, Path(folder_text).name, "unreadable", problems=[f"trial.json: {error}"])
    check = TrialCheck(folder_text, str(info.get("trial", config.trial_id())), str(info.get("status")))
    layers = layer_count(config.architecture, config.measure)  # None: an own module's, named in trial.json
    check.seeds, check.layers, check.estimators = (
        len(config.seeds),
        layers or len(info.get("layers", [])),
        len(config.estimators),
    )
    if not check.layers:
        check.problems.append("trial.json: names no measured layers of the own module (its 'layers')")
        return check
    check.epochs = len(measured_epochs(config))

    tables = {}
    complete = info.get("status") == "complete"
    # A trial still running writes its parts, then trial.json: parts newer than trial.json's
    # last write are its write in progress (left unread), and a fault only once it is complete.
    in_progress = None if complete else info.get("parts")
    for table, columns in (("mi", MI_COLUMNS), ("metrics", METRICS_COLUMNS)):
        try:
            tables[table], parts, problems = _read(folder, table, columns, in_progress)
        except (OSError, pa.ArrowException) as error:
            check.problems.append(f"{table}: unreadable part file ({' '.join(str(error).split())[:300]})")
            return check
        if problems:
            check.problems += problems
            return check
        if "parts" in info and complete:
            newer = [
                str(p).rsplit("/", 1)[-1] for p in parts if (part_write(str(p).rsplit("/", 1)[-1]) or 0) > info["parts"]
            ]
            if newer:
                check.problems.append(
                    f"{table}: part files newer than trial.json's last write ({info['parts']}): {', '.join(newer)}"
                )

    # The kept attempt of each seed: trial.json's, else (older folders) the highest in the rows.
    if "restarts" in info:
        kept = {int(seed): int(attempt) for seed, attempt in info["restarts"].items()}
    else:
        found = tables["metrics"].group_by("seed").agg(pl.col("restarts").max())
        kept = {seed: 0 for seed in config.seeds} | dict(found.rows())
    check.restarted = {seed: attempt for seed, attempt in kept.items() if attempt}
    if sorted(kept) != sorted(config.seeds):
        check.problems.append(
            f"trial.json: attempts recorded for seeds {sorted(kept)}, config trains {sorted(config.seeds)}"
        )
    attempts = pl.DataFrame(
        {"seed": list(kept), "kept": list(kept.values())}, schema={"seed": pl.Int64, "kept": pl.Int32}
    )

    up_to = None if complete else int(info.get("epochs_run", 0))
    grid = measured_epochs(config)
    due = pl.DataFrame(measured_epochs(config, up_to), schema={"phase": pl.String, "epoch": pl.Int32}, orient="row")
    on_grid = pl.DataFrame(grid, schema={"phase": pl.String, "epoch": pl.Int32}, orient="row")
    seeds = pl.DataFrame({"seed": list(config.seeds)}, schema={"seed": pl.Int64})
    layers = pl.DataFrame({"layer": range(1, check.layers + 1)}, schema={"layer": pl.Int32})
    estimators = pl.DataFrame({"estimator": list(config.estimators)}, schema={"estimator": pl.String})
    expected = {
        "metrics": seeds.join(due, how="cross"),
        "mi": seeds.join(due, how="cross").join(layers, how="cross").join(estimators, how="cross"),
    }
    allowed = {"layer": layers, "estimator": estimators}

    for table, rows in tables.items():
        key = METRICS_COLUMNS if table == "metrics" else MI_COLUMNS
        key = [c for c in key if c != "restarts"]
        rows = rows.join(attempts, on="seed", how="left")
        stray = rows.filter(pl.col("kept").is_null())
        if stray.height:
            check.problems.append(
                f"{table}: {stray.height} rows of seeds the trial does not train: {sorted(stray['seed'].unique())}"
            )
        discarded = rows.filter(pl.col("kept").is_not_null() & (pl.col("restarts") != pl.col("kept")))
        for (seed,), group in discarded.group_by(["seed"], maintain_order=True):
            attempts_seen = sorted(group["restarts"].unique())
            check.problems.append(f"{table}: seed {seed}: {group.height} rows of discarded attempt(s) {attempts_seen}")
        rows = rows.filter(pl.col("restarts") == pl.col("kept")).drop("kept", "restarts")
        off = rows.join(on_grid, on=["phase", "epoch"], how="anti")
        for column, values in allowed.items():
            if column in rows.columns:
                off = pl.concat([off, rows.join(values, on=column, how="anti")]).unique()
        if off.height:
            check.problems.append(f"{table}: {off.height} rows off the measuring grid (epochs {_epochs_text(off)})")
        repeated = rows.filter(pl.struct(key).is_duplicated())
        for (seed,), group in repeated.group_by(["seed"], maintain_order=True):
            check.problems.append(f"{table}: seed {seed}: {group.height} duplicated rows at {_epochs_text(group)}")
        missing = expected[table].join(rows, on=key, how="anti")
        for (seed,), group in missing.sort(["seed", "phase", "epoch"]).group_by(["seed"], maintain_order=True):
            attempt = f" (attempt {kept[seed]})" if kept.get(seed) else ""
            check.problems.append(
                f"{table}: seed {seed}{attempt}: {group.height} rows missing at {_epochs_text(group)}"
            )

    if complete and int(info.get("epochs_run", -1)) != config.prefit_epochs + config.epochs:
        check.problems.append(
            f"trial.json: status 'complete' but epochs_run {info.get('epochs_run')} of {config.prefit_epochs + config.epochs}"
        )
    return check


def find_trials(location: str | Path) -> list[str | Path]:
    """Trial folders (those holding a trial.json) at or below a path or URI, sorted."""
    filesystem, inner = resolve(location)
    here = filesystem.get_file_info(inner)
    if here.type == pafs.FileType.NotFound:
        raise VerifyError(f"{location}: no such file or folder")
    if here.type != pafs.FileType.Directory:
        raise VerifyError(f"{location}: not a folder; pass a trial, sweep or results folder")
    infos = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
    found = []
    for entry in infos:
        relative = entry.path[len(inner) :].strip("/").split("/")
        if entry.base_name == "trial.json" and not any(p.startswith(".") or p == "tune" for p in relative[:-1]):
            found.append("/".join(relative[:-1]))
    if filesystem.get_file_info(f"{inner.rstrip('/')}/trial.json").type == pafs.FileType.File:
        found.append("")
    trials = sorted(set(found))
    if not trials:
        raise VerifyError(
            f"{location}: no trial here (no trial.json at any depth); pass a trial, sweep or results folder"
        )
    return [join(location, *t.split("/")) if t else location for t in trials]


def find_sweeps(location: str | Path) -> list[str | Path]:
    """Sweep folders (those holding a sweep.yaml) at or below a path or URI, sorted."""
    filesystem, inner = resolve(location)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    found = [""] if filesystem.get_file_info(f"{inner.rstrip('/')}/{SWEEP_FILE}").type == pafs.FileType.File else []
    for entry in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True)):
        relative = entry.path[len(inner) :].strip("/").split("/")
        if entry.base_name == SWEEP_FILE and not any(p.startswith(".") or p in (TRIALS, TUNE) for p in relative[:-1]):
            found.append("/".join(relative[:-1]))
    return [join(location, *s.split("/")) if s else location for s in sorted(set(found))]


def missing_trials(folder: str | Path) -> list[TrialCheck]:
    """A failed check for each trial of a sweep folder's grid (its sweep.yaml) that has no
    trial.json: it never started (or its folder was deleted). Verify would otherwise pass a
    sweep of which some trials failed before writing anything."""
    from ibray.data import DataError
    from ibray.sweep import SweepError

    source = f"{folder}/{SWEEP_FILE}"
    try:
        spec = read_sweep_file(folder)
        statuses = trial_statuses(spec, str(folder))
    except (SweepError, DataError) as error:
        return [
            TrialCheck(
                str(folder),
                SWEEP_FILE,
                "unreadable",
                problems=[
                    f"its grid cannot be checked here ({' '.join(str(error).split())[:300]}); run verify where the sweep ran, "
                    f"or verify {join(folder, TRIALS)} alone"
                ],
            )
        ]
    return [
        TrialCheck(
            str(join(folder, TRIALS, trial)),
            trial,
            "absent",
            problems=[
                f"in the grid of {source} but no trial.json: it never started, or its folder is gone; "
                f"run the sweep again with --resume"
            ],
        )
        for trial, status in statuses.items()
        if status == "absent"
    ]


def verify(paths: list[str | Path]) -> list[TrialCheck]:
    """Check every trial at or below `paths`, and that every sweep folder among them holds a
    trial for each point of its grid; raises VerifyError when a path holds no trial."""
    checks = []
    for location in paths:
        checks += [verify_trial(trial) for trial in find_trials(location)]
        for sweep in find_sweeps(location):
            checks += missing_trials(sweep)
    return checks


def summary(checks: list[TrialCheck]) -> str:
    good = sum(check.ok for check in checks)
    failed = sum(bool(check.problems) for check in checks)
    unfinished = len(checks) - good - failed
    text = f"verified {len(checks)} trial(s): {good} complete with every row exactly once"
    if failed:
        text += f", {failed} with missing, duplicated or stray rows"
    if unfinished:
        text += f", {unfinished} unfinished"
    return text
