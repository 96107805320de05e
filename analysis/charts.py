"""Altair charts of aggregated results: information planes, MI and accuracy over epochs.

This module owns how results are drawn: thinning epochs for drawing, the long formats the
charts read, and the chart specs. Chart functions take small, already aggregated Polars
frames (from aggregate.py) and return Altair chart objects; they write nothing.

Thinning: a curve keeps at most `max_epochs` of its epochs for drawing: half log-spaced
(dense where training moves fast), half evenly spaced (so late epochs stay covered), always
the first and the last. Each chart's subtitle says how many epochs it draws.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.aggregate import PLANE

MAX_EPOCHS = 200  # epochs drawn per curve
COLOR_SCHEME = "viridis"
WIDTH, HEIGHT = 320, 260
ESTIMATOR_ORDER = ["exact", "bin30", "bin100", "bin256"]


def estimator_order(estimators) -> list[str]:
    """The estimators given, exact first, then the study's bin counts, then any others sorted."""
    present = set(estimators)
    return [e for e in ESTIMATOR_ORDER if e in present] + sorted(present - set(ESTIMATOR_ORDER))


def thinned(group: list[str], max_epochs: int = MAX_EPOCHS, epoch: str = "global_epoch") -> pl.Expr:
    """True for the rows to draw: at most ~max_epochs distinct epochs per group (see above)."""
    index = _over(pl.col(epoch).rank("dense"), group).cast(pl.Float64)  # 1..count
    count = _over(index.max(), group)
    half = max(max_epochs // 2, 1)

    def log_bucket(i: pl.Expr) -> pl.Expr:
        return (i.log() / count.log() * (half - 1)).floor()

    def even_bucket(i: pl.Expr) -> pl.Expr:
        return ((i - 1) * half / count).floor()

    return (
        (count <= max_epochs)
        | (index == 1)
        | (index == count)
        | (log_bucket(index) != log_bucket(index - 1))
        | (even_bucket(index) != even_bucket(index - 1))
    )


def _over(expr: pl.Expr, group: list[str]) -> pl.Expr:
    return expr.over(group) if group else expr


def thin(frame: pl.DataFrame, group: list[str], max_epochs: int = MAX_EPOCHS) -> tuple[pl.DataFrame, str]:
    """The rows to draw and a note for the subtitle saying how epochs were thinned."""
    group = [g for g in group if g in frame.columns]
    epochs = _over(pl.col("global_epoch").n_unique(), group).max()
    total = frame.select(epochs).item() if frame.height else 0
    kept = frame.filter(thinned(group, max_epochs)) if frame.height else frame
    drawn = kept.select(epochs).item() if kept.height else 0
    if drawn == total:
        return kept, f"all {total} recorded epochs drawn"
    return kept, f"{drawn} of {total} recorded epochs drawn (log-spaced and evenly spaced)"


def _values(frame: pl.DataFrame) -> alt.Data:
    """Inline data for a spec: floats rounded to 5 decimals, NaN as null (valid JSON)."""
    frame = frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None).round(5))
    return alt.Data(values=frame.to_dicts())


def _title(text: str, subtitle: str | list[str]) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=subtitle, anchor="start")


def _epoch_axis(frame: pl.DataFrame) -> str:
    return "epoch (prefit, then train)" if "prefit" in set(frame.get_column("phase").unique().to_list()) else "epoch"


def _plane_layers(x: str, y: str, epoch_title: str) -> list[alt.Chart]:
    tooltip = [
        alt.Tooltip("layer:O"),
        alt.Tooltip("phase:N"),
        alt.Tooltip("epoch:Q"),
        alt.Tooltip(f"{x}:Q", title="I(X;T)", format=".3f"),
        alt.Tooltip(f"{y}:Q", title="I(T;Y)", format=".3f"),
    ]
    base = alt.Chart().encode(
        x=alt.X(f"{x}:Q", title="I(X;T) (bits)", scale=alt.Scale(zero=True)),
        y=alt.Y(f"{y}:Q", title="I(T;Y) (bits)", scale=alt.Scale(zero=True)),
    )
    curve = base.mark_line(color="#999999", strokeWidth=1, opacity=0.6).encode(
        detail="layer:O", order="global_epoch:Q"
    )
    points = base.mark_circle(size=16, opacity=0.9).encode(
        color=alt.Color("global_epoch:Q", title=epoch_title, scale=alt.Scale(scheme=COLOR_SCHEME)),
        tooltip=tooltip,
    )
    return [curve, points]


def information_plane(
    frame: pl.DataFrame, title: str, x: str = "mi_xt_mean", y: str = "mi_ty_mean", max_epochs: int = MAX_EPOCHS
) -> alt.LayerChart:
    """I(X;T) against I(T;Y), one curve per layer, points coloured by epoch.

    `frame` holds one group's curves (from mi_stats, or one repetition's rows with x="mi_xt",
    y="mi_ty"), with layer, phase, epoch and global_epoch.
    """
    drawn, note = thin(frame.select("layer", "phase", "epoch", "global_epoch", x, y), ["layer"], max_epochs)
    return alt.layer(*_plane_layers(x, y, _epoch_axis(frame)), data=_values(drawn)).properties(
        title=_title(title, ["one curve per layer (the last is the output)", note]), width=WIDTH, height=HEIGHT
    )


def _band_long(frame: pl.DataFrame, columns: dict[str, str], key: str, extra: list[str]) -> pl.DataFrame:
    """Long format of mean +- one std: a row per (extra..., epoch, key) with mean, low, high."""
    parts = [
        frame.select(
            *extra,
            "phase",
            "epoch",
            "global_epoch",
            pl.lit(label).alias(key),
            pl.col(f"{column}_mean").alias("mean"),
            (pl.col(f"{column}_mean") - pl.col(f"{column}_std").fill_null(0)).alias("low"),
            (pl.col(f"{column}_mean") + pl.col(f"{column}_std").fill_null(0)).alias("high"),
            pl.col("n"),
        )
        for column, label in columns.items()
    ]
    return pl.concat(parts)


def _band_layers(color: alt.Color, value_title: str, epoch_title: str) -> list[alt.Chart]:
    base = alt.Chart().encode(x=alt.X("global_epoch:Q", title=epoch_title), color=color)
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title=value_title), y2="high:Q")
    line = base.mark_line(strokeWidth=1.5).encode(
        y="mean:Q",
        tooltip=[
            alt.Tooltip(color.shorthand),
            alt.Tooltip("phase:N"),
            alt.Tooltip("epoch:Q"),
            alt.Tooltip("mean:Q", format=".3f"),
            alt.Tooltip("low:Q", title="mean - std", format=".3f"),
            alt.Tooltip("high:Q", title="mean + std", format=".3f"),
            alt.Tooltip("n:Q", title="repetitions"),
        ],
    )
    return [band, line]


def mi_over_epochs(stats: pl.DataFrame, title: str, max_epochs: int = MAX_EPOCHS) -> alt.FacetChart:
    """I(X;T) and I(T;Y) against epoch per layer: mean and a band of one standard deviation."""
    drawn, note = thin(stats, ["layer"], max_epochs)
    long = _band_long(drawn, {"mi_xt": "I(X;T)", "mi_ty": "I(T;Y)"}, "quantity", ["layer"])
    color = alt.Color("layer:O", title="layer", scale=alt.Scale(scheme=COLOR_SCHEME))
    return (
        alt.layer(*_band_layers(color, "bits", _epoch_axis(stats)), data=_values(long))
        .properties(width=WIDTH, height=HEIGHT - 40)
        .facet(column=alt.Column("quantity:N", title=None, sort=["I(X;T)", "I(T;Y)"]))
        .resolve_scale(y="independent")
        .properties(title=_title(title, ["mean over repetitions, band: one standard deviation", note]))
    )


def accuracy(metrics: pl.DataFrame, title: str, max_epochs: int = MAX_EPOCHS) -> alt.LayerChart:
    """Train and test accuracy against epoch: mean and a band of one standard deviation."""
    drawn, note = thin(metrics, [], max_epochs)
    long = _band_long(drawn, {"train_acc": "train", "test_acc": "test"}, "split", [])
    color = alt.Color("split:N", title="accuracy", sort=["train", "test"])
    return alt.layer(*_band_layers(color, "accuracy", _epoch_axis(metrics)), data=_values(long)).properties(
        title=_title(title, ["mean over repetitions, band: one standard deviation", note]), width=WIDTH, height=HEIGHT
    )


def comparison(
    stats: pl.DataFrame, by: str, title: str, order: list | None = None, max_epochs: int = MAX_EPOCHS // 2
) -> alt.FacetChart:
    """Information planes side by side, one per value of `by` (e.g. 'estimator' or 'bits').

    `stats` holds the mean curves of the groups to compare (from mi_stats, with column `by`);
    panels follow `order` (default: exact, bin30, bin100, bin256 for estimators, else sorted).
    """
    group = [g for g in PLANE if g in stats.columns]
    drawn, note = thin(stats, [*group, "layer"], max_epochs)
    drawn = drawn.select(by, "layer", "phase", "epoch", "global_epoch", "mi_xt_mean", "mi_ty_mean")
    values = drawn.get_column(by).unique().to_list()
    if order is None and by == "estimator":
        order = estimator_order(values)
    elif order is None:
        order = sorted(values)
    kind = "O" if by == "bits" else "N"
    return (
        alt.layer(*_plane_layers("mi_xt_mean", "mi_ty_mean", _epoch_axis(stats)), data=_values(drawn))
        .properties(width=WIDTH - 80, height=HEIGHT - 60)
        .facet(column=alt.Column(f"{by}:{kind}", sort=order, title=None))
        .properties(title=_title(title, ["mean over repetitions, one curve per layer", note]))
    )
