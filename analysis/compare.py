"""Estimators against the exact values: the referee table, and the `ibray compare` command.

This module owns the comparison. A point is one (sweep, trial, seed, phase, epoch, layer) of a
network; each estimator's row there is set beside the exact row of the same point (points
without both are left out), and per network (dataset, architecture, activation, bits) and
estimator the table gives:

- the mean and the worst absolute error of I(X;T) and of I(T;Y), in bits, over the points;
- its DPI violations (phases.dpi_violations, on the same points), of the points compared;
- the layers that show fitting and compression (phases.py's definitions and threshold, on the
  mean curves at the epochs where every repetition is present), by the exact values and by the
  estimator's, and whether the two agree.

The report shows the same table (sections.py), beside each estimator's plane overlaid on the
exact one and its gap to the exact values per layer over epochs (`gaps`); `ibray compare`
prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import polars as pl

from analysis import aggregate, phases
from analysis.aggregate import NETWORK, PLANE, PLANE_PHASE
from analysis.load import REPETITION, ResultsError, load
from analysis.output import OutputError, refuse_inside_inputs, write_atomically

EXACT = "exact"
POINT = [*NETWORK, *REPETITION, "phase", "epoch", "layer"]
COLUMNS = [  # the referee table's, in order
    *NETWORK,
    "estimator",
    "points",
    "mi_xt_error_mean",
    "mi_xt_error_worst",
    "mi_ty_error_mean",
    "mi_ty_error_worst",
    "dpi_violations",
    "fitting_exact",
    "fitting",
    "compression_exact",
    "compression",
    "same_phases",
]


class CompareError(ResultsError):
    """Results that hold nothing to compare; the message says what to run instead."""


def pairs(mi: pl.LazyFrame) -> pl.LazyFrame:
    """Every row of an estimator other than exact, beside the exact row of the same point:
    the estimator's mi_xt, mi_ty, the exact_xt, exact_ty, and error_xt, error_ty (estimate -
    exact, bits)."""
    exact = mi.filter(pl.col("estimator") == EXACT).select(
        *POINT, pl.col("mi_xt").alias("exact_xt"), pl.col("mi_ty").alias("exact_ty")
    )
    return (
        mi.filter(pl.col("estimator") != EXACT)
        .select(*POINT, "estimator", "layer_name", "width", "mi_xt", "mi_ty")
        .join(exact, on=POINT, how="inner", nulls_equal=True)
        .with_columns(
            (pl.col("mi_xt") - pl.col("exact_xt")).alias("error_xt"),
            (pl.col("mi_ty") - pl.col("exact_ty")).alias("error_ty"),
        )
    )


def gaps(mi: pl.LazyFrame) -> pl.LazyFrame:
    """Each estimator's gap to the exact values per layer over epochs: per PLANE_PHASE, epoch
    and layer of an estimator other than exact, over the repetitions that have both values
    there (`points`), the mean estimate (estimate_xt, estimate_ty), the mean exact value
    (exact_xt, exact_ty) and the mean gap (gap_xt, gap_ty: estimate - exact, bits), with
    layer_name and global_epoch; sorted by group, layer and global epoch."""
    return (
        pairs(mi)
        .group_by([*PLANE_PHASE, "epoch", "layer"])
        .agg(
            pl.col("layer_name").first(),
            pl.col("mi_xt").mean().alias("estimate_xt"),
            pl.col("exact_xt").mean(),
            pl.col("error_xt").mean().alias("gap_xt"),
            pl.col("mi_ty").mean().alias("estimate_ty"),
            pl.col("exact_ty").mean(),
            pl.col("error_ty").mean().alias("gap_ty"),
            pl.len().alias("points"),
        )
        .with_columns(aggregate.global_epoch(PLANE))
        .sort([*PLANE_PHASE, "layer", "global_epoch"])
    )


def errors(paired: pl.LazyFrame) -> pl.LazyFrame:
    """Per PLANE: points compared and the mean and worst absolute error of each MI, bits."""
    return paired.group_by(PLANE).agg(
        pl.len().alias("points"),
        pl.col("error_xt").abs().mean().alias("mi_xt_error_mean"),
        pl.col("error_xt").abs().max().alias("mi_xt_error_worst"),
        pl.col("error_ty").abs().mean().alias("mi_ty_error_mean"),
        pl.col("error_ty").abs().max().alias("mi_ty_error_worst"),
    )


def layer_label() -> pl.Expr:
    """A layer as the table names it: '2' in the train phase, 'prefit 2' in the prefit one."""
    return (
        pl.when(pl.col("phase") == "train")
        .then(pl.col("layer").cast(pl.String))
        .otherwise(pl.format("{} {}", pl.col("phase").cast(pl.String), "layer"))
    )


def layers_where(present: pl.Expr) -> pl.Expr:
    """The labels of the layers where `present` holds, comma-separated ('' if none); in agg."""
    return pl.col("label").filter(present).str.join(",")


def phase_agreement(paired: pl.LazyFrame, threshold: float = phases.DEFAULT_THRESHOLD) -> pl.LazyFrame:
    """Per PLANE: the layers that show fitting and compression by the exact values
    (fitting_exact, compression_exact) and by the estimator's (fitting, compression), and
    same_phases (both lists equal). Each on the mean curves of the paired points, like the
    report's phase table, so the exact values and the estimator's average the same
    repetitions."""
    columns = [*PLANE_PHASE, *REPETITION, "epoch", "layer", "layer_name", "width"]
    estimated = paired.select(*columns, "mi_xt", "mi_ty")
    exact = paired.select(*columns, pl.col("exact_xt").alias("mi_xt"), pl.col("exact_ty").alias("mi_ty"))

    def per_layer(frame: pl.LazyFrame) -> pl.LazyFrame:
        # Means over whoever is left would invent phases where repetitions are missing.
        return phases.phases(aggregate.mi_stats(frame).filter(pl.col("complete")), threshold).select(
            *PLANE_PHASE, "layer", "fit_bits", "compress_bits"
        )

    both = per_layer(estimated).join(
        per_layer(exact), on=[*PLANE_PHASE, "layer"], how="full", coalesce=True, suffix="_exact", nulls_equal=True
    )
    shows = {
        "fitting": pl.col("fit_bits") > threshold,
        "fitting_exact": pl.col("fit_bits_exact") > threshold,
        "compression": pl.col("compress_bits") > threshold,
        "compression_exact": pl.col("compress_bits_exact") > threshold,
    }
    return (
        both.with_columns(layer_label().alias("label"))
        .sort([*PLANE, aggregate.phase_order(), "layer"])
        .group_by(PLANE, maintain_order=True)
        .agg(*[layers_where(present.fill_null(False)).alias(name) for name, present in shows.items()])
        .with_columns(
            (
                (pl.col("fitting") == pl.col("fitting_exact")) & (pl.col("compression") == pl.col("compression_exact"))
            ).alias("same_phases")
        )
    )


def dpi(paired: pl.LazyFrame) -> pl.LazyFrame:
    """Per PLANE: the estimator's DPI violations on the paired points, as 'violations / compared'."""
    per_layer = phases.dpi_violations(paired.select(*PLANE_PHASE, *REPETITION, "epoch", "layer", "mi_xt", "mi_ty"))
    return (
        per_layer.group_by(PLANE)
        .agg(pl.col("dpi").sum(), pl.col("checked").sum())
        .select(*PLANE, pl.format("{} / {}", "dpi", "checked").alias("dpi_violations"))
    )


def referee(mi: pl.LazyFrame, threshold: float = phases.DEFAULT_THRESHOLD) -> pl.LazyFrame:
    """The referee table: one row per PLANE of an estimator other than exact (see the module
    docstring), sorted by network and estimator; empty when no point has both."""
    paired = pairs(mi)
    return (
        errors(paired)
        .join(dpi(paired), on=PLANE, how="left", nulls_equal=True)
        .join(phase_agreement(paired, threshold), on=PLANE, how="left", nulls_equal=True)
        .with_columns(pl.col("dpi_violations").fill_null("0 / 0"), pl.col(pl.Categorical).cast(pl.String))
        .select(COLUMNS)
        .sort([*NETWORK, "estimator"])
    )


def compare(paths: list[str | Path], threshold: float = phases.DEFAULT_THRESHOLD) -> pl.DataFrame:
    """The referee table of the results below `paths`. Raises ResultsError (CompareError when
    there is nothing to compare: no exact rows, no other estimator, no point with both)."""
    results = load(paths)
    present, table = pl.collect_all([results.mi.select(pl.col("estimator").unique()), referee(results.mi, threshold)])
    estimators = set(present.get_column("estimator").to_list())
    where = ", ".join(str(p) for p in paths)
    if EXACT not in estimators:
        raise CompareError(
            f"{where}: no exact rows to compare against (estimators found: {', '.join(sorted(estimators)) or 'none'}); "
            "run the trials with exact among their estimators, e.g. --estimators exact,bin30,kde"
        )
    if estimators == {EXACT}:
        raise CompareError(
            f"{where}: only exact rows, no estimator to compare with them; "
            "run the trials with others beside exact, e.g. --estimators exact,bin30,kde"
        )
    if table.height == 0:
        raise CompareError(
            f"{where}: no (sweep, trial, seed, phase, epoch, layer) has both an exact and an estimated value; "
            "compare results whose trials ran exact beside the other estimators"
        )
    return table


# --- output ------------------------------------------------------------------------------


def display(table: pl.DataFrame, digits: int = 3) -> pl.DataFrame:
    """The referee table as text for people (the text table, the report): the network and
    estimator, then each error as 'mean / worst', the DPI violations, and each phase's layers
    as 'exact / estimator' ('none' where no layer shows it)."""

    def number(name: str) -> pl.Expr:
        return pl.col(name).round(digits).cast(pl.String)

    def layers(name: str) -> pl.Expr:
        return pl.when(pl.col(name) == "").then(pl.lit("none")).otherwise(pl.col(name))

    return table.select(
        *[pl.col(name).cast(pl.String) for name in NETWORK],
        "estimator",
        pl.col("points").cast(pl.String),
        pl.format("{} / {}", number("mi_xt_error_mean"), number("mi_xt_error_worst")).alias(
            "I(X;T) |error|: mean / worst"
        ),
        pl.format("{} / {}", number("mi_ty_error_mean"), number("mi_ty_error_worst")).alias(
            "I(T;Y) |error|: mean / worst"
        ),
        pl.col("dpi_violations").alias("DPI violations"),
        pl.format("{} / {}", layers("fitting_exact"), layers("fitting")).alias("fitting: exact / estimator"),
        pl.format("{} / {}", layers("compression_exact"), layers("compression")).alias(
            "compression: exact / estimator"
        ),
        pl.when(pl.col("same_phases")).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("same phases"),
    ).with_columns(pl.all().fill_null("–"))


def legend(threshold: float = phases.DEFAULT_THRESHOLD) -> str:
    return (
        "Each estimator against the exact values at the same (sweep, trial, seed, phase, epoch, layer), "
        "errors in bits; DPI violations: points where a layer's MI exceeds the previous layer's, of those "
        "compared; fitting and compression: the layers that show them on the mean curves, by the exact values "
        f"and by the estimator's (threshold {threshold} bits; 'prefit 2' is layer 2 in the prefit phase)."
    )


def text_table(table: pl.DataFrame, threshold: float = phases.DEFAULT_THRESHOLD) -> str:
    """The table as aligned columns under the legend."""
    shown = display(table)
    rows = [list(shown.columns), *(list(row) for row in shown.iter_rows())]
    widths = [max(len(text) for text in column) for column in zip(*rows)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join([legend(threshold), "", *lines])


def write_csv(table: pl.DataFrame, path: str) -> None:
    """The table as CSV at `path`, written beside it and renamed: a failure leaves the old file."""
    write_atomically(Path(path), table.write_csv().encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ibray compare",
        description="Each estimator against the exact values: errors of I(X;T) and I(T;Y), DPI violations, phases.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="trial, sweep or results folders")
    parser.add_argument("--json", action="store_true", help="print the table as JSON (a list of rows) instead of text")
    parser.add_argument("--csv", metavar="FILE", default=None, help="also write the table as CSV to FILE")
    parser.add_argument(
        "--threshold",
        type=float,
        default=phases.DEFAULT_THRESHOLD,
        help="bits a phase must exceed (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        if not (math.isfinite(args.threshold) and args.threshold >= 0):
            raise ResultsError(f"--threshold {args.threshold}: give a finite number of bits >= 0")
        if args.csv is not None:  # before anything is computed: never among the results read
            refuse_inside_inputs("--csv", args.csv, args.results, ".csv")
        table = compare(args.results, args.threshold)
        if args.csv is not None:
            write_csv(table, args.csv)
    except (ResultsError, OutputError) as error:
        print(f"ibray: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(table.to_dicts(), indent=1) if args.json else text_table(table, args.threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
