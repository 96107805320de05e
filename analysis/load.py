"""Loading ibray results: find the files, check them against the schema, scan them lazily.

This module owns the contract with `ibray/`: the column names and types of the two tables
(declared here again, because `analysis` never imports `ibray`; a test checks that both
declarations agree), the layout of a results folder, and what counts as a duplicate row.
Everything after it works on the lazy frames of `Results`.

Layout, at any depth below each path given:

    .../<trial>/mi/*.parquet        one row per (seed, phase, epoch, estimator, layer)
    .../<trial>/metrics/*.parquet   one row per (seed, phase, epoch)
    .../<trial>/trial.json          {"sweep", "trial", "status", "config"}
    .../<sweep>/sweep.yaml          the sweep file as given

Repetitions: a repetition is identified by (sweep, trial, seed), so the same seed run by two
trials or two sweeps counts twice within a group (it is a second run, possibly of different
code). Within one repetition, rows with the same key are duplicates and one is kept, and if
a seed was rerun after a dead start (`restarts` > 0) only its highest `restarts` is kept.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs

AXES = {
    "sweep": pl.String,
    "trial": pl.String,
    "dataset": pl.String,
    "architecture": pl.String,
    "activation": pl.String,
    "bits": pl.Int32,
    "seed": pl.Int64,
    "restarts": pl.Int32,
    "phase": pl.String,
    "epoch": pl.Int32,
}
MI_SCHEMA = AXES | {
    "estimator": pl.String,
    "layer": pl.Int32,
    "layer_name": pl.String,
    "width": pl.Int32,
    "mi_xt": pl.Float64,
    "mi_ty": pl.Float64,
    "h_t": pl.Float64,
    "n_states": pl.Int64,
    "t_min": pl.Float64,
    "t_max": pl.Float64,
}
METRICS_SCHEMA = AXES | {
    "train_loss": pl.Float64,
    "test_loss": pl.Float64,
    "train_acc": pl.Float64,
    "test_acc": pl.Float64,
}
SCHEMAS = {"mi": MI_SCHEMA, "metrics": METRICS_SCHEMA}
FLOAT_BITS = 32  # `bits` of the plain float32 network (not quantized)
REPETITION = ["sweep", "trial", "seed"]
MI_KEY = [*REPETITION, "phase", "epoch", "estimator", "layer"]
METRICS_KEY = [*REPETITION, "phase", "epoch"]
KEYS = {"mi": MI_KEY, "metrics": METRICS_KEY}
PHASES = ("prefit", "train")  # in the order they run


class ResultsError(Exception):
    """What is wrong with which results path, and how to fix it, in one message."""


@dataclass
class Results:
    """A set of ibray results: lazy, deduplicated tables and what the folders say about them.

    mi, metrics: lazy frames with the schema above, duplicates and superseded restarts dropped.
    trials: one row per trial.json found (sweep, trial, status, complete, path and the config's
        dataset, architecture, activation, bits, seeds, estimators, epochs, prefit_epochs).
    sweep_files: path of every sweep.yaml found -> its text, verbatim.
    files: the Parquet files read, per table.
    """

    mi: pl.LazyFrame
    metrics: pl.LazyFrame
    trials: pl.DataFrame
    sweep_files: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def incomplete(self) -> list[str]:
        """'sweep/trial' of every trial whose trial.json does not say it is complete."""
        rows = self.trials.filter(~pl.col("complete")).select("sweep", "trial").rows()
        return [f"{sweep}/{trial}" for sweep, trial in rows]


TRIALS_SCHEMA = {
    "sweep": pl.String,
    "trial": pl.String,
    "status": pl.String,
    "complete": pl.Boolean,
    "path": pl.String,
    "dataset": pl.String,
    "architecture": pl.String,
    "activation": pl.String,
    "bits": pl.Int64,
    "seeds": pl.List(pl.Int64),
    "estimators": pl.List(pl.String),
    "epochs": pl.Int64,
    "prefit_epochs": pl.Int64,
}


def load(paths: list[str | Path]) -> Results:
    """Find, check and lazily scan the ibray results below `paths` (trial, sweep or root folders).

    Raises ResultsError when a path is missing, holds no ibray results, or holds a file that is
    unreadable or has another schema; a trial still running is not an error (see
    `Results.incomplete`).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ResultsError("no results path given; pass a trial, sweep or results folder")
    roots = [fetch_remote(p) if isinstance(p, str) and "://" in p else Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise ResultsError(f"{root}: no such file or folder")
        if not root.is_dir():
            raise ResultsError(f"{root}: not a folder; pass a trial, sweep or results folder")

    files = {table: _find(roots, f"{table}/*.parquet") for table in SCHEMAS}
    if not files["mi"]:
        others = _find(roots, "*.parquet")
        where = ", ".join(str(r) for r in roots)
        if others:
            raise ResultsError(
                f"{where}: {len(others)} Parquet file(s) (e.g. {others[0]}) but none in an mi/ "
                "folder, so this is not ibray output; pass the folder an ibray sweep wrote "
                "(<root>/<sweep>/trials/<trial>/mi/part-*.parquet)"
            )
        if _find(roots, "trial.json"):
            raise ResultsError(
                f"{where}: trials have started but written no MI rows yet; wait for the first epochs to finish"
            )
        raise ResultsError(
            f"{where}: no ibray results here (no <trial>/mi/part-*.parquet at any depth); "
            "pass the folder an ibray sweep wrote"
        )
    for table, table_files in files.items():
        for path in table_files:
            _check_schema(path, table)

    return Results(
        mi=_scan(files["mi"], "mi"),
        metrics=_scan(files["metrics"], "metrics"),
        trials=_read_trials(roots),
        sweep_files=_read_sweep_files(roots),
        files=files,
    )


def fetch_remote(uri: str) -> Path:
    """Copy the ibray files (Parquet parts, trial.json, sweep.yaml) below a filesystem URI
    (s3://, gs://, file://: anything pyarrow resolves) into a fresh local folder; returns it.

    Fresh on every call, and deleted when this process exits: a copy kept from an earlier call
    would bring back trials deleted since (a sweep rerun with --overwrite). The lazy frames of
    `load` scan the copy, so it lives as long as the process. Tune's checkpoints and state next
    to the results are not copied."""
    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as error:
        raise ResultsError(f"{uri}: cannot be read ({error}); check the URI and your credentials") from None
    if not infos and filesystem.get_file_info(base).type == pafs.FileType.NotFound:
        raise ResultsError(f"{uri}: no such file or folder")
    wanted = [
        info
        for info in infos
        if info.type == pafs.FileType.File
        and (
            info.base_name in ("trial.json", "sweep.yaml")
            or (info.base_name.startswith("part-") and info.base_name.endswith(".parquet"))
        )
        and "/tune/" not in info.path[len(base) :]
    ]
    local = Path(tempfile.mkdtemp(prefix="ibray-report-"))
    atexit.register(shutil.rmtree, local, True)
    for info in wanted:
        target = local / info.path[len(base) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as source:
            target.write_bytes(source.read())
    return local


def _find(roots: list[Path], pattern: str) -> list[Path]:
    """Files matching `pattern` at any depth below the roots, hidden ones skipped, each once."""
    found: dict[Path, None] = {}
    for root in roots:
        for path in sorted(root.rglob(pattern)):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                found.setdefault(path.resolve(), None)
    return list(found)


def _check_schema(path: Path, table: str) -> None:
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as error:  # noqa: BLE001 - any reader error means the same to the user
        raise ResultsError(
            f"{path}: not a readable Parquet file ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "it may be truncated or still being copied; delete it or rerun the trial that wrote it"
        ) from None
    expected = SCHEMAS[table]
    missing = [name for name in expected if name not in schema]
    extra = [name for name in schema if name not in expected]
    wrong = [
        f"{name} is {schema[name]}, expected {expected[name]}"
        for name in expected
        if name in schema and schema[name] != expected[name]
    ]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if wrong:
        problems.append("; ".join(wrong))
    if problems:
        raise ResultsError(
            f"{path}: not an ibray {table} table ({'; '.join(problems)}); "
            f"files under {table}/ must be written by ibray with its {table} schema; "
            "remove foreign files or results of an incompatible ibray version"
        )


def _scan(files: list[Path], table: str) -> pl.LazyFrame:
    """One lazy frame over the files, with duplicate keys and superseded restarts dropped."""
    schema = SCHEMAS[table]
    if not files:
        return pl.LazyFrame(schema=schema)
    return (
        pl.scan_parquet([str(f) for f in files], schema=schema)
        .filter(pl.col("restarts") == pl.col("restarts").max().over(REPETITION))
        # Exact and about 4x faster than .unique(subset=...) here; keeps the first occurrence.
        .filter(pl.struct(KEYS[table]).is_first_distinct())
    )


def _read_trials(roots: list[Path]) -> pl.DataFrame:
    rows = []
    for path in _find(roots, "trial.json"):
        try:
            info = json.loads(path.read_text())
            config = info.get("config") or {}
            status = str(info.get("status", "unknown"))
            rows.append(
                {
                    "sweep": str(info.get("sweep", "")),
                    "trial": str(info["trial"]),
                    "status": status,
                    "complete": status == "complete",
                    "path": str(path.parent),
                    "dataset": config.get("dataset"),
                    "architecture": config.get("architecture"),
                    "activation": config.get("activation"),
                    "bits": config.get("bits"),
                    "seeds": [int(s) for s in config.get("seeds", [])],
                    "estimators": [str(e) for e in config.get("estimators", [])],
                    "epochs": config.get("epochs"),
                    "prefit_epochs": config.get("prefit_epochs"),
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ResultsError(
                f"{path}: not an ibray trial.json ({type(error).__name__}: {error}); "
                'it must hold {"sweep", "trial", "status", "config"}'
            ) from None
    return pl.DataFrame(rows, schema=TRIALS_SCHEMA).unique(["sweep", "trial"], keep="last", maintain_order=True)


def _read_sweep_files(roots: list[Path]) -> dict[str, str]:
    """Every sweep.yaml at or below the roots, and the enclosing sweep's for a trial folder."""
    found = _find(roots, "sweep.yaml")
    for root in roots:
        enclosing = root.resolve().parent.parent / "sweep.yaml"
        if (root / "trial.json").exists() and enclosing.is_file() and enclosing not in found:
            found.append(enclosing)
    return {str(path): path.read_text(errors="replace") for path in found}
