"""What the report shows, as small eager tables: every aggregation over the results in one pass.

This module owns the step from the lazy frames of `load` to `Tables`: one Polars `collect_all`
over the deduplicated rows read once into memory, so the Parquet files are scanned once; the
page (sections.py) draws only from these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from analysis import aggregate, compare, phases
from analysis.aggregate import PLANE
from analysis.load import REPETITION, Results


@dataclass
class Tables:
    """Everything the report shows, collected from the lazy frames in one pass."""

    mi_stats: pl.DataFrame
    metrics_stats: pl.DataFrame
    median: pl.DataFrame
    median_rows: pl.DataFrame
    phases: pl.DataFrame
    dpi: pl.DataFrame
    final: pl.DataFrame
    progress: pl.DataFrame
    completeness: pl.DataFrame
    repeated_seeds: pl.DataFrame
    referee: pl.DataFrame  # estimators against the exact values (compare.py); empty without both
    gaps: pl.DataFrame  # each estimator's gap to exact per layer and epoch (compare.gaps); empty without both


def compute(results: Results, threshold: float = phases.DEFAULT_THRESHOLD) -> Tables:
    """Run all aggregations over the results and return small eager tables.

    The deduplicated rows are read once into memory (only the columns needed, strings as
    Categorical): Polars does not share the deduplicating scan between queries, and every
    query on the in-memory rows is much faster than a rescan.
    """
    mi_columns = [*aggregate.PLANE_PHASE, *REPETITION, "epoch", "layer", "layer_name", "width", "mi_xt", "mi_ty"]
    slim = pl.col(pl.String).cast(pl.Categorical)
    mi, metrics = pl.collect_all([results.mi.select(mi_columns).with_columns(slim), results.metrics.with_columns(slim)])
    mi, metrics = mi.lazy(), metrics.lazy()
    stats = aggregate.mi_stats(mi)
    median = aggregate.median_deviating(mi, stats)
    frames = pl.collect_all(
        [
            stats,
            aggregate.metrics_stats(metrics),
            median,
            aggregate.repetition_rows(mi, median).select(
                *PLANE, *REPETITION, "phase", "epoch", "global_epoch", "layer", "mi_xt", "mi_ty"
            ),
            # Means over whoever is left would invent phases where repetitions are missing.
            phases.phases(stats.filter(pl.col("complete")), threshold),
            phases.dpi_violations(mi),
            aggregate.final_metrics(metrics),
            aggregate.progress(mi, results.trials),
            aggregate.completeness(stats),
            aggregate.repeated_seeds(metrics),
            compare.referee(mi, threshold),
            compare.gaps(mi),
        ]
    )
    return Tables(*(frame.with_columns(pl.col(pl.Categorical).cast(pl.String)) for frame in frames))
