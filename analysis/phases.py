"""The training phases of the information plane as numbers, and data-processing checks.

This module owns the definitions, applied to the mean curves of each (group, layer) with
`threshold` bits of tolerance (default 0.05 bits), epochs counted within the phase:

- fitting: I(T;Y) rising. Its size is max I(T;Y) - I(T;Y) at the first epoch; it starts at the
  first epoch where I(T;Y) exceeds its first value by more than the threshold and ends at the
  first epoch where I(T;Y) comes within the threshold of its maximum.
- compression: I(X;T) falling after its maximum. Its size is max I(X;T) - the smallest I(X;T)
  from the maximum on; it starts at the (first) epoch of the maximum and ends at the first
  epoch after it where I(X;T) comes within the threshold of that smallest value.
A phase whose size is not above the threshold is absent: its epochs are null.

DPI violations: T_{l+1} is a function of T_l, so I(X;T_{l+1}) <= I(X;T_l) and likewise for
I(T;Y), for every repetition and epoch. A violation is a (repetition, epoch) at which layer l
exceeds layer l-1 by more than `tolerance` bits; exact MI has none, binning may.
"""

from __future__ import annotations

import polars as pl

from analysis.aggregate import PLANE_PHASE
from analysis.load import REPETITION

DEFAULT_THRESHOLD = 0.05  # bits
DEFAULT_TOLERANCE = 1e-9  # bits: float rounding in entropies, not a violation


def first_epoch_where(condition: pl.Expr) -> pl.Expr:
    """The first epoch of a group at which `condition` holds (null if never); in agg context."""
    return pl.col("epoch").filter(condition).min()


def fitting(curve: str = "mi_ty_mean", threshold: float = DEFAULT_THRESHOLD) -> list[pl.Expr]:
    """fit_start, fit_end, fit_bits of a rising curve, in a group_by(...).agg over epochs."""
    values = pl.col(curve).sort_by("epoch")
    first, peak = values.first(), pl.col(curve).max()
    size = peak - first
    present = size > threshold
    return [
        pl.when(present).then(first_epoch_where(pl.col(curve) > first + threshold)).alias("fit_start"),
        pl.when(present).then(first_epoch_where(pl.col(curve) >= peak - threshold)).alias("fit_end"),
        pl.when(present).then(size).otherwise(0.0).alias("fit_bits"),
    ]


def compression(curve: str = "mi_xt_mean", threshold: float = DEFAULT_THRESHOLD) -> list[pl.Expr]:
    """compress_start, compress_end, compress_bits of a curve falling after its maximum."""
    peak = pl.col(curve).max()
    start = first_epoch_where(pl.col(curve) == peak)
    after = pl.col("epoch") >= start
    low = pl.col(curve).filter(after).min()
    size = peak - low
    present = size > threshold
    return [
        pl.when(present).then(start).alias("compress_start"),
        pl.when(present).then(first_epoch_where(after & (pl.col(curve) <= low + threshold))).alias("compress_end"),
        pl.when(present).then(size).otherwise(0.0).alias("compress_bits"),
    ]


def phases(stats: pl.LazyFrame, threshold: float = DEFAULT_THRESHOLD) -> pl.LazyFrame:
    """Fitting and compression per (group, layer) from the mean curves of `mi_stats`."""
    return (
        stats.group_by([*PLANE_PHASE, "layer"])
        .agg(
            *fitting(threshold=threshold), *compression(threshold=threshold), pl.col("epoch").max().alias("last_epoch")
        )
        .sort([*PLANE_PHASE, "layer"])
    )


def dpi_violations(mi: pl.LazyFrame, tolerance: float = DEFAULT_TOLERANCE) -> pl.LazyFrame:
    """Per (group, layer): how many (repetition, epoch) points break the DPI against layer - 1.

    Columns dpi_xt, dpi_ty (violations of each inequality), dpi (either) and checked (points
    compared). Layer 1 has nothing before it and is not listed.
    """
    point = [*PLANE_PHASE, *REPETITION, "epoch"]
    values = mi.select(*point, "layer", "mi_xt", "mi_ty")
    previous = values.select(
        *point, (pl.col("layer") + 1).alias("layer"), pl.col("mi_xt").alias("prev_xt"), pl.col("mi_ty").alias("prev_ty")
    )
    xt = pl.col("mi_xt") > pl.col("prev_xt") + tolerance
    ty = pl.col("mi_ty") > pl.col("prev_ty") + tolerance
    return (
        values.join(previous, on=[*point, "layer"], how="inner", nulls_equal=True)
        .group_by([*PLANE_PHASE, "layer"])
        .agg(
            xt.sum().alias("dpi_xt"),
            ty.sum().alias("dpi_ty"),
            (xt | ty).sum().alias("dpi"),
            pl.len().alias("checked"),
        )
        .sort([*PLANE_PHASE, "layer"])
    )
