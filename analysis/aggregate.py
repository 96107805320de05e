"""Aggregation over repetitions: mean curves, their spread, the median-deviating repetition.

This module owns the words for what is averaged over, each a list of columns:
    NETWORK       dataset, architecture, activation, bits: one trained configuration;
    PLANE         NETWORK + estimator: what one information plane shows (both phases);
    PLANE_PHASE   PLANE + phase: the MI curves are per (PLANE_PHASE, epoch, layer);
    NETWORK_PHASE NETWORK + phase: the metrics curves are per (NETWORK_PHASE, epoch);
and a repetition is (sweep, trial, seed) (see load.py for why). Everything here takes and
returns lazy frames and builds them from small expression helpers; nothing iterates over rows
in Python.

Statistics use the sample variance (ddof = 1): with a single repetition, var and std are null.
"""

from __future__ import annotations

import polars as pl

from analysis.load import PHASES, REPETITION

NETWORK = ["dataset", "architecture", "activation", "bits"]
PLANE = [*NETWORK, "estimator"]
PLANE_PHASE = [*PLANE, "phase"]
NETWORK_PHASE = [*NETWORK, "phase"]
MI_VALUES = ["mi_xt", "mi_ty"]
METRIC_VALUES = ["train_acc", "test_acc", "train_loss", "test_loss"]


def spread(column: str) -> list[pl.Expr]:
    """Mean, sample variance and standard deviation of a column, named <column>_mean etc."""
    values = pl.col(column)
    return [
        values.mean().alias(f"{column}_mean"),
        values.var(ddof=1).alias(f"{column}_var"),
        values.std(ddof=1).alias(f"{column}_std"),
    ]


def phase_order() -> pl.Expr:
    """0 for prefit, 1 for train: the order in which phases run (unknown phases last)."""
    return pl.col("phase").replace_strict(list(PHASES), list(range(len(PHASES))), default=len(PHASES))


def run_order() -> pl.Expr:
    """A sort key for (phase, epoch) in the order they ran: prefit epochs, then train epochs."""
    return phase_order() * (1 << 32) + pl.col("epoch")


def global_epoch(group: list[str]) -> pl.Expr:
    """Epochs since the start of the run: a train epoch is shifted by the group's prefit epochs.

    The prefit length is read from the data (the last prefit epoch within `group`), so a group
    without a prefit phase keeps its epochs.
    """
    prefit_epochs = pl.col("epoch").filter(pl.col("phase") == "prefit").max().over(group).fill_null(0)
    return (pl.col("epoch") + pl.when(pl.col("phase") == "train").then(prefit_epochs).otherwise(0)).alias(
        "global_epoch"
    )


def mi_stats(mi: pl.LazyFrame) -> pl.LazyFrame:
    """Per group, epoch and layer over repetitions: mean, var, std of I(X;T) and I(T;Y), and n.

    Adds `repetitions` (of the whole PLANE), `complete` (n == repetitions: no repetition
    is missing at this point, so the mean is over all of them) and `global_epoch` (see
    `global_epoch`); sorted by group, layer and global epoch.
    """
    repetitions = mi.group_by(PLANE).agg(pl.struct(REPETITION).n_unique().alias("repetitions"))
    return (
        mi.group_by([*PLANE_PHASE, "epoch", "layer"])
        .agg(
            pl.col("layer_name").first(),
            pl.col("width").first(),
            *spread("mi_xt"),
            *spread("mi_ty"),
            pl.len().alias("n"),
        )
        .join(repetitions, on=PLANE, how="left", nulls_equal=True)
        .with_columns((pl.col("n") == pl.col("repetitions")).alias("complete"), global_epoch(PLANE))
        .sort([*PLANE_PHASE, "layer", "global_epoch"])
    )


def completeness(stats: pl.LazyFrame) -> pl.LazyFrame:
    """Per PLANE: repetitions, measured epochs, and the epochs where some are missing.

    From `mi_stats`. An epoch is incomplete when any layer there lacks a repetition. Columns:
    repetitions, epochs, incomplete_epochs, fewest (repetitions present at the worst epoch),
    first_incomplete / last_incomplete (global epochs; null when complete).
    """
    points = stats.group_by([*PLANE, "global_epoch"]).agg(
        pl.col("complete").all(), pl.col("repetitions").first(), pl.col("n").min()
    )
    gaps = pl.col("global_epoch").filter(~pl.col("complete"))
    return (
        points.group_by(PLANE)
        .agg(
            pl.col("repetitions").first(),
            pl.len().alias("epochs"),
            (~pl.col("complete")).sum().alias("incomplete_epochs"),
            pl.col("n").min().alias("fewest"),
            gaps.min().alias("first_incomplete"),
            gaps.max().alias("last_incomplete"),
        )
        .sort(PLANE)
    )


def metrics_stats(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Per group and epoch over repetitions: mean, var, std of accuracies and losses, and n."""
    return (
        metrics.group_by([*NETWORK_PHASE, "epoch"])
        .agg(*[e for column in METRIC_VALUES for e in spread(column)], pl.len().alias("n"))
        .with_columns(global_epoch(NETWORK))
        .sort([*NETWORK_PHASE, "global_epoch"])
    )


def deviation(mi: pl.LazyFrame, stats: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Each repetition's L2 distance from its group's mean curves, over both phases.

    The distance is sqrt(sum over (phase, epoch, layer) of (I(X;T) - mean)^2 + (I(T;Y) - mean)^2),
    over the points that repetition has (a repetition cut short is compared where it ran).
    One row per (PLANE, sweep, trial, seed) with `distance` and `points`.
    """
    stats = mi_stats(mi) if stats is None else stats
    means = stats.select(*PLANE_PHASE, "epoch", "layer", "mi_xt_mean", "mi_ty_mean")
    return (
        mi.select(*PLANE_PHASE, *REPETITION, "epoch", "layer", *MI_VALUES)
        .join(means, on=[*PLANE_PHASE, "epoch", "layer"], how="inner", nulls_equal=True)
        .group_by([*PLANE, *REPETITION])
        .agg(
            ((pl.col("mi_xt") - pl.col("mi_xt_mean")) ** 2 + (pl.col("mi_ty") - pl.col("mi_ty_mean")) ** 2)
            .sum()
            .sqrt()
            .alias("distance"),
            pl.len().alias("points"),
        )
    )


def median_deviating(mi: pl.LazyFrame, stats: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The median-deviating repetition of each group (the paper's appendix B).

    Repetitions are ranked by `deviation` (ties broken by sweep, trial, seed); the one ranked
    (n + 1) // 2 of n is chosen, i.e. the lower median when n is even. One row per PLANE
    with sweep, trial, seed, distance and `repetitions` (n).
    """
    ranked = deviation(mi, stats).sort([*PLANE, "distance", *REPETITION])
    return (
        ranked.with_columns(
            pl.int_range(1, pl.len() + 1).over(PLANE).alias("rank"),
            pl.len().over(PLANE).alias("repetitions"),
        )
        .filter(pl.col("rank") == (pl.col("repetitions") + 1) // 2)
        .drop("rank")
        .sort(PLANE)
    )


def repetition_rows(mi: pl.LazyFrame, chosen: pl.LazyFrame) -> pl.LazyFrame:
    """The MI rows of the chosen repetitions (one per PLANE), with `global_epoch`."""
    return (
        mi.join(chosen.select(*PLANE, *REPETITION), on=[*PLANE, *REPETITION], how="semi", nulls_equal=True)
        .with_columns(global_epoch([*PLANE, *REPETITION]))
        .sort([*PLANE, "layer", "global_epoch"])
    )


def final_metrics(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Accuracies and losses at each repetition's last epoch (last phase), averaged per group.

    One row per NETWORK: <value>_mean/_var/_std, `repetitions`, and the last phase
    and epoch reached (the smallest over repetitions, so a run cut short shows).
    """
    order = run_order()
    last = metrics.group_by([*NETWORK, *REPETITION]).agg(pl.col("phase", "epoch", *METRIC_VALUES).sort_by(order).last())
    return (
        last.group_by(NETWORK)
        .agg(
            *[e for column in METRIC_VALUES for e in spread(column)],
            pl.len().alias("repetitions"),
            pl.col("phase", "epoch").sort_by(run_order()).first().name.prefix("last_"),
        )
        .sort(NETWORK)
    )


def progress(mi: pl.LazyFrame, trials: pl.DataFrame) -> pl.LazyFrame:
    """Per trial: status from trial.json, seeds written and the last phase/epoch with MI rows.

    Trials that have rows but no trial.json appear with status 'unknown'; trials with a
    trial.json but no rows yet appear with no seeds written.
    """
    order = run_order()
    seen = (
        mi.with_columns(pl.col("sweep", "trial").cast(pl.String))
        .group_by(["sweep", "trial"])
        .agg(
            pl.col("seed").n_unique().alias("seeds_written"),
            pl.col("phase").sort_by(order).last().alias("last_phase"),
            pl.col("epoch").sort_by(order).last().alias("last_epoch"),
        )
    )
    info = trials.lazy().select(
        "sweep", "trial", "status", "epochs", "prefit_epochs", pl.col("seeds").list.len().alias("seeds_asked")
    )
    return (
        info.join(seen, on=["sweep", "trial"], how="full", coalesce=True)
        .with_columns(pl.col("status").fill_null("unknown"), pl.col("seeds_written").fill_null(0))
        .sort("sweep", "trial")
    )


def repeated_seeds(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Seeds of one NETWORK written by more than one (sweep, trial): each counts as a
    repetition, although the same config and seed give the same run. One row per such seed:
    NETWORK, seed, `places` (their number) and `where` ('sweep/trial, ...')."""
    return (
        metrics.select(*NETWORK, "seed", "sweep", "trial")
        .unique()
        .group_by(*NETWORK, "seed")
        .agg(pl.len().alias("places"), pl.format("{}/{}", "sweep", "trial").sort().str.join(", ").alias("where"))
        .filter(pl.col("places") > 1)
        .sort(*NETWORK, "seed")
    )
