"""Synthetic ibray results for the analysis tests and the report benchmark.

Writes trial folders exactly as ibray does (ibray.records schemas and atomic writer), with
curves made up in numpy: smooth, DPI-respecting for 'exact', layer order broken for binning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

# The repository root, for `import ibray` / `import analysis` when ibray is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1])) if str(
    Path(__file__).resolve().parents[1]
) not in sys.path else None

from ibray.records import METRICS_SCHEMA, MI_SCHEMA, write_atomic  # noqa: E402 (the path first)

LAYER_NAMES = ["dense1", "dense2", "dense3", "dense4", "dense5", "dense6", "softmax"]


def _column(value, n: int, kind: pa.DataType) -> pa.Array:
    """A column of n values from a scalar (repeated cheaply) or an array."""
    if isinstance(value, (list, tuple, np.ndarray, pa.Array)):
        return pa.array(np.asarray(value) if not isinstance(value, pa.Array) else value, kind)
    if pa.types.is_string(kind):
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], kind)).cast(kind)
    return pa.array(np.full(n, value), kind)


def table(name: str, n: int | None = None, **columns) -> pa.Table:
    """An 'mi' or 'metrics' table from columns (scalars are repeated); unset columns get defaults."""
    schema = {"mi": MI_SCHEMA, "metrics": METRICS_SCHEMA}[name]
    if n is None:
        n = max(len(v) for v in columns.values() if isinstance(v, (list, tuple, np.ndarray, pa.Array)))
    defaults = dict(
        sweep="s",
        trial="t0",
        dataset="synthetic12",
        architecture="syn",
        activation="tanh",
        bits=8,
        seed=0,
        restarts=0,
        phase="train",
        epoch=0,
        estimator="exact",
        layer=1,
        layer_name="dense1",
        width=10,
        mi_xt=0.0,
        mi_ty=0.0,
        h_t=0.0,
        n_states=1,
        t_min=-1.0,
        t_max=1.0,
        train_loss=0.5,
        test_loss=0.5,
        train_acc=0.5,
        test_acc=0.5,
    )
    unknown = set(columns) - set(schema.names)
    assert not unknown, unknown
    arrays = [_column(columns.get(f.name, defaults[f.name]), n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def curves(
    seeds, epochs: int, layers: int = 7, estimators=("exact",), prefit_epochs: int = 0, mi_every: int = 1, **axes
) -> tuple[pa.Table, pa.Table]:
    """MI and metrics rows for a grid of seeds x phases x epochs x layers x estimators (numpy only)."""
    phases = ([("prefit", np.arange(0, prefit_epochs + 1, mi_every))] if prefit_epochs else []) + [
        ("train", np.unique(np.r_[np.arange(0 if not prefit_epochs else mi_every, epochs + 1, mi_every), epochs]))
    ]
    total = prefit_epochs + epochs
    mi_parts, metric_parts = [], []
    for phase, phase_epochs in phases:
        offset = prefit_epochs if phase == "train" else 0
        seed, epoch = (a.ravel() for a in np.meshgrid(np.asarray(seeds), phase_epochs, indexing="ij"))
        progress = (epoch + offset) / max(total, 1)
        noise = 0.01 * np.sin(seed * 12.9898 + epoch * 78.233)  # shared by all layers: DPI survives
        learned = 1 - np.exp(-6 * progress) if phase == "train" else 0.1 * progress
        metric_parts.append(
            table(
                "metrics",
                seed=seed,
                epoch=epoch,
                phase=phase,
                train_acc=0.5 + 0.45 * learned + noise,
                test_acc=0.5 + 0.4 * learned + noise,
                train_loss=0.7 - 0.6 * learned - noise,
                test_loss=0.7 - 0.5 * learned - noise,
                **axes,
            )
        )
        for estimator in estimators:
            for layer in range(1, layers + 1):
                rank = 1.0 - 0.12 * (layer - 1)
                if estimator != "exact":  # binning breaks the layer order now and then
                    rank *= 1.0 + 0.3 * (layer % 2)
                shape = 0.6 + 0.4 * np.minimum(progress / 0.3, 1) - 0.3 * np.clip((progress - 0.3) / 0.7, 0, 1)
                mi_xt = 12 * rank * shape * (1 + noise)
                mi_ty = 0.999 * rank * learned * (1 + noise)
                mi_parts.append(
                    table(
                        "mi",
                        seed=seed,
                        epoch=epoch,
                        phase=phase,
                        estimator=estimator,
                        layer=layer,
                        layer_name=LAYER_NAMES[(layer - 1) % len(LAYER_NAMES)],
                        width=max(2, 12 - layer),
                        mi_xt=mi_xt,
                        mi_ty=mi_ty,
                        h_t=mi_xt,
                        n_states=np.round(2**mi_xt).astype(np.int64),
                        **axes,
                    )
                )
    return pa.concat_tables(mi_parts), pa.concat_tables(metric_parts)


def write_trial(
    folder: Path, mi: pa.Table, metrics: pa.Table, config: dict | None = None, status: str = "complete", parts: int = 1
) -> Path:
    """A trial folder: mi/ and metrics/ part files split by row ranges, and trial.json."""
    folder = Path(folder)
    for name, rows in (("mi", mi), ("metrics", metrics)):
        bounds = np.linspace(0, rows.num_rows, parts + 1).astype(int)
        for index, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
            if last > first:
                write_atomic(rows.slice(first, last - first), folder / name / f"part-{index:05d}.parquet")
    sweep = mi["sweep"][0].as_py() if mi.num_rows else ""
    trial = mi["trial"][0].as_py() if mi.num_rows else folder.name
    (folder / "trial.json").write_text(
        json.dumps({"sweep": sweep, "trial": trial, "status": status, "config": config or {}})
    )
    return folder


def write_sweep(
    root: Path,
    sweep: str,
    trials: int,
    seeds_per_trial: int,
    epochs: int,
    layers: int = 7,
    estimators=("exact",),
    prefit_epochs: int = 0,
    parts: int = 1,
    yaml_text: str | None = None,
    folder_name: str | None = None,
    **axes,
) -> Path:
    """A sweep folder with `trials` trials of the same configuration, each its own block of seeds.

    The folder is <root>/<folder_name or sweep>; rows and trial.json carry `sweep` as the name.
    """
    folder = Path(root) / (folder_name or sweep)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(
        yaml_text if yaml_text is not None else f"name: {sweep}\nseeds: 0-{trials * seeds_per_trial - 1}\n"
    )
    for index in range(trials):
        seeds = list(range(index * seeds_per_trial, (index + 1) * seeds_per_trial))
        trial = f"trial{index:03d}"
        mi, metrics = curves(seeds, epochs, layers, estimators, prefit_epochs, sweep=sweep, trial=trial, **axes)
        config = dict(
            dataset=axes.get("dataset", "synthetic12"),
            architecture=axes.get("architecture", "syn"),
            activation=axes.get("activation", "tanh"),
            bits=axes.get("bits", 8),
            seeds=seeds,
            estimators=list(estimators),
            epochs=epochs,
            prefit_epochs=prefit_epochs,
            mi_every=1,
        )
        write_trial(folder / "trials" / trial, mi, metrics, config, parts=parts)
    return folder
