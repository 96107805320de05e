"""Altair charts of aggregated results: information planes, MI and accuracy over epochs, and
estimators against the exact values (planes overlaid, gaps over epochs).

This module owns how results are drawn: thinning epochs for drawing, the long formats the
charts read, and the chart specs. Chart functions take small, already aggregated Polars
frames (from aggregate.py) and return Altair chart objects; they write nothing.

Interaction (Vega-Lite selections, offline): a plane and the MI curves colour their lines by
layer with a legend that highlights the layer clicked (LAYER_PICK); the curves carry an epoch
brush (EPOCH_BRUSH) and a plane shows only the epochs between its EPOCH_FROM and EPOCH_TO
parameters, which the report's page (page.py's script) sets from a brush on the same group's
curves. The plane and the curves of one group read the same columns (CURVE_COLUMNS), so the
page stores their data once.

Thinning: a curve keeps at most `max_epochs` of its epochs for drawing: half log-spaced
(dense where training moves fast), half evenly spaced (so late epochs stay covered), always
the first and the last. Each chart's subtitle says how many epochs it draws.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from analysis.aggregate import PLANE

MAX_EPOCHS = 200  # epochs drawn per curve
COLOR_SCHEME = "viridis"  # epochs
LAYER_SCHEME = "category10"  # layers: told apart, not ordered by hue
WIDTH, HEIGHT = 320, 260  # px, the plot area of a chart at a fixed size (PNG, SVG, replication page)
DIMMED = 0.08  # opacity of the layers not picked in the legend
LAYER_PICK, EPOCH_BRUSH, EPOCH_FROM, EPOCH_TO = "layer_pick", "epochs", "epoch_from", "epoch_to"
ALL_EPOCHS = (-1, 1e15)  # EPOCH_FROM, EPOCH_TO before anything is brushed
CURVE_COLUMNS = [
    "layer",
    "layer_name",
    "phase",
    "epoch",
    "global_epoch",
    "mi_xt_mean",
    "mi_xt_std",
    "mi_ty_mean",
    "mi_ty_std",
    "n",
]
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


INLINE_ROWS = 5000  # Altair's limit on a data frame's rows; larger data goes inline, unchecked by it


def _values(frame: pl.DataFrame) -> pl.DataFrame | alt.Data:
    """A chart's data: floats rounded to 5 decimals, NaN as null (valid JSON). Up to INLINE_ROWS
    rows it is handed to Altair as a frame, which Altair stores under the spec's top-level
    `datasets` by name (see `rows`) after checking the spec against the Vega-Lite schema; rows
    given as alt.Data(values=...) are checked one by one, which took most of a report's build
    (1.1 s against 0.04 s a chart of 4,900 rows, measured). Larger data (the charts thin their
    epochs, so rarely) stays inline values, as before."""
    frame = frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None).round(5))
    return frame if frame.height <= INLINE_ROWS else alt.Data(values=frame.to_dicts())


def rows(spec: dict) -> list[dict]:
    """The rows a chart's spec (`chart.to_dict()`) draws: its named data set, or its inline values."""
    data = spec["data"]
    return data["values"] if "values" in data else spec["datasets"][data["name"]]


def _title(text: str, subtitle: str | list[str]) -> alt.TitleParams:
    return alt.TitleParams(text=text, subtitle=subtitle, anchor="start")


def _epoch_axis(frame: pl.DataFrame) -> str:
    return "epoch (prefit, then train)" if "prefit" in set(frame.get_column("phase").unique().to_list()) else "epoch"


def _layer_pick() -> alt.Parameter:
    return alt.selection_point(name=LAYER_PICK, fields=["layer"], bind="legend")


def _layer_color(legend: bool = True) -> alt.Color:
    return alt.Color(
        "layer:O", title="layer (click)", scale=alt.Scale(scheme=LAYER_SCHEME), legend=alt.Legend() if legend else None
    )


def _highlight(opacity: float) -> alt.ConditionalValueDefnumberExprRef:
    return alt.condition(alt.param(LAYER_PICK), alt.value(opacity), alt.value(DIMMED))


def _plane_layers(
    x: str, y: str, epoch_title: str, columns: list[str], domain: tuple[float, float, float] | None = None
) -> list[alt.Chart]:
    """A curve per layer (coloured by layer) and its points (coloured by epoch), with tooltips.

    `domain`: (max I(X;T), max I(T;Y), last epoch) shared by the planes drawn side by side.
    """
    tooltip = [alt.Tooltip("layer:O")]
    if "layer_name" in columns:
        tooltip.append(alt.Tooltip("layer_name:N", title="layer name"))
    tooltip += [
        alt.Tooltip("phase:N"),
        alt.Tooltip("epoch:Q"),
        alt.Tooltip(f"{x}:Q", title="I(X;T)", format=".3f"),
        alt.Tooltip(f"{y}:Q", title="I(T;Y)", format=".3f"),
    ]
    if "n" in columns:
        tooltip.append(alt.Tooltip("n:Q", title="repetitions"))
    extent = {} if domain is None else {"domain": [0, domain[0]], "nice": False}
    base = alt.Chart().encode(
        x=alt.X(f"{x}:Q", title="I(X;T) (bits)", scale=alt.Scale(zero=True, **extent)),
        y=alt.Y(
            f"{y}:Q",
            title="I(T;Y) (bits)",
            scale=alt.Scale(zero=True, **({} if domain is None else {"domain": [0, domain[1]], "nice": False})),
        ),
    )
    shown = f"datum.global_epoch >= {EPOCH_FROM} && datum.global_epoch <= {EPOCH_TO}"
    curve = (
        base.mark_line(strokeWidth=1.5)
        .encode(color=_layer_color(), detail="layer:O", order="global_epoch:Q", opacity=_highlight(0.7))
        .add_params(_layer_pick())
        .transform_filter(shown)
    )
    epochs = {} if domain is None else {"domain": [0, domain[2]]}
    points = (
        base.mark_circle(size=22)
        .encode(
            color=alt.Color("global_epoch:Q", title=epoch_title, scale=alt.Scale(scheme=COLOR_SCHEME, **epochs)),
            opacity=_highlight(0.9),
            tooltip=tooltip,
        )
        .transform_filter(shown)
    )
    return [curve, points]


def _all_epochs() -> list[alt.Parameter]:
    return [alt.param(name=EPOCH_FROM, value=ALL_EPOCHS[0]), alt.param(name=EPOCH_TO, value=ALL_EPOCHS[1])]


def information_plane(
    frame: pl.DataFrame,
    title: str,
    x: str = "mi_xt_mean",
    y: str = "mi_ty_mean",
    max_epochs: int = MAX_EPOCHS,
    *,
    domain: tuple[float, float, float] | None = None,
    width: int | str = WIDTH,
    height: int = HEIGHT,
) -> alt.LayerChart:
    """I(X;T) against I(T;Y), one curve per layer, points coloured by epoch.

    `frame` holds one group's curves (from mi_stats, or one repetition's rows with x="mi_xt",
    y="mi_ty"), with layer, phase, epoch and global_epoch. The mean curves are drawn from
    CURVE_COLUMNS (the data of `mi_curves` too). Clicking a layer in the legend highlights it;
    only the epochs from EPOCH_FROM to EPOCH_TO are drawn. `domain`: see `_plane_layers`;
    `width` may be "container" (the width of the page's grid cell).
    """
    if x == "mi_xt_mean" and y == "mi_ty_mean" and set(CURVE_COLUMNS) <= set(frame.columns):
        drawn, note = curve_data(frame, max_epochs)
    else:
        columns = [
            c for c in ("layer", "layer_name", "phase", "epoch", "global_epoch", x, y, "n") if c in frame.columns
        ]
        drawn, note = thin(frame.select(columns), ["layer"], max_epochs)
    return (
        alt.layer(*_plane_layers(x, y, _epoch_axis(frame), drawn.columns, domain), data=_values(drawn))
        .resolve_scale(color="independent")
        .add_params(*_all_epochs())
        .properties(
            title=_title(title, ["one curve per layer (the last is the output)", note]),
            width=width,
            height=height,
        )
    )


def curve_data(stats: pl.DataFrame, max_epochs: int = MAX_EPOCHS) -> tuple[pl.DataFrame, str]:
    """One group's mean curves as the plane and the MI curves draw them: CURVE_COLUMNS, thinned."""
    return thin(stats.select(CURVE_COLUMNS), ["layer"], max_epochs)


def mi_curves(
    stats: pl.DataFrame,
    quantity: str,
    title: str,
    max_epochs: int = MAX_EPOCHS,
    *,
    domain: tuple[float, float] | None = None,
    width: int | str = WIDTH,
    height: int = HEIGHT - 100,
) -> alt.LayerChart:
    """One quantity ("mi_xt" or "mi_ty") against epoch per layer: mean and a band of one
    standard deviation, with an epoch brush (EPOCH_BRUSH) and the layer legend of the plane.

    `domain`: (last epoch, largest mean + std) shared with the groups drawn beside it.
    """
    drawn, note = curve_data(stats, max_epochs)
    label = {"mi_xt": "I(X;T)", "mi_ty": "I(T;Y)"}[quantity]
    mean, std = f"{quantity}_mean", f"{quantity}_std"
    epochs = {} if domain is None else {"domain": [0, domain[0]], "nice": False}
    values = {} if domain is None else {"domain": [0, domain[1]], "nice": False}
    base = alt.Chart().encode(
        x=alt.X("global_epoch:Q", title=_epoch_axis(stats), scale=alt.Scale(**epochs)), color=_layer_color()
    )
    band = (
        base.transform_calculate(low=f"datum.{mean} - (datum.{std} || 0)", high=f"datum.{mean} + (datum.{std} || 0)")
        .mark_area(opacity=0.15)
        .encode(
            y=alt.Y("low:Q", title=f"{label} (bits)", scale=alt.Scale(**values)), y2="high:Q", opacity=_highlight(0.2)
        )
    )
    line = base.mark_line(strokeWidth=1.5).encode(
        y=f"{mean}:Q",
        opacity=_highlight(1.0),
        tooltip=[
            alt.Tooltip("layer:O"),
            alt.Tooltip("phase:N"),
            alt.Tooltip("epoch:Q"),
            alt.Tooltip(f"{mean}:Q", title=f"{label} mean", format=".3f"),
            alt.Tooltip(f"{std}:Q", title=f"{label} std", format=".3f"),
            alt.Tooltip("n:Q", title="repetitions"),
        ],
    )
    return alt.layer(
        band.add_params(alt.selection_interval(name=EPOCH_BRUSH, encodings=["x"])),
        line.add_params(_layer_pick()),
        data=_values(drawn),
    ).properties(
        title=_title(
            f"{label} per layer: {title}",
            ["mean, band: one standard deviation; drag to pick epochs for the plane", note],
        ),
        width=width,
        height=height,
    )


def spread_over_epochs(
    stats: pl.DataFrame, title: str, max_epochs: int = MAX_EPOCHS, *, width: int | str = WIDTH, height: int = HEIGHT
) -> alt.LayerChart:
    """The paper's appendix B: the standard deviation over repetitions of I(X;T) (solid) and
    I(T;Y) (dashed) per layer against epoch, with the layer legend; tooltips add the variance."""
    drawn, note = curve_data(stats, max_epochs)
    return (
        alt.Chart(_values(drawn))
        .transform_fold(["mi_xt_std", "mi_ty_std"], as_=["quantity", "std"])
        .transform_calculate(
            quantity="datum.quantity == 'mi_xt_std' ? 'I(X;T)' : 'I(T;Y)'", variance="datum.std * datum.std"
        )
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("global_epoch:Q", title=_epoch_axis(stats)),
            y=alt.Y("std:Q", title="standard deviation (bits)"),
            color=_layer_color(),
            strokeDash=alt.StrokeDash("quantity:N", sort=["I(X;T)", "I(T;Y)"], title=None),
            opacity=_highlight(1.0),
            tooltip=[
                alt.Tooltip("layer:O"),
                alt.Tooltip("quantity:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("std:Q", format=".4f"),
                alt.Tooltip("variance:Q", format=".5f"),
                alt.Tooltip("n:Q", title="repetitions"),
            ],
        )
        .add_params(_layer_pick())
        .properties(
            title=_title(title, ["over repetitions, per layer: I(X;T) solid, I(T;Y) dashed", note]),
            width=width,
            height=height,
        )
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
        alt.layer(*_plane_layers("mi_xt_mean", "mi_ty_mean", _epoch_axis(stats), drawn.columns), data=_values(drawn))
        .resolve_scale(color="independent")
        .add_params(*_all_epochs())
        .properties(width=WIDTH - 80, height=HEIGHT - 60)
        .facet(column=alt.Column(f"{by}:{kind}", sort=order, title=None))
        .properties(title=_title(title, ["mean over repetitions, one curve per layer", note]))
    )


ESTIMATOR_PICK = "estimator_pick"
EXACT_COLOR = "#222222"  # exact: the reference, in near-black; the estimators in ESTIMATOR_COLORS
ESTIMATOR_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _estimator_color(estimators: list[str]) -> alt.Color:
    """Colour by estimator: exact near-black, the others in ESTIMATOR_COLORS (cycled), in order."""
    others = iter(ESTIMATOR_COLORS * (len(estimators) // len(ESTIMATOR_COLORS) + 1))
    colors = [EXACT_COLOR if e == "exact" else next(others) for e in estimators]
    return alt.Color(
        "estimator:N", title="estimator (click)", scale=alt.Scale(domain=estimators, range=colors), sort=estimators
    )


def estimators_plane(
    stats: pl.DataFrame,
    title: str,
    max_epochs: int = MAX_EPOCHS // 2,
    *,
    domain: tuple[float, float] | None = None,
    width: int | str = WIDTH,
    height: int = HEIGHT,
) -> alt.LayerChart:
    """One network's mean information planes, exact and each estimator overlaid: a curve per
    (estimator, layer), coloured by estimator (exact near-black), its points shaped by layer.
    Clicking an estimator in the legend highlights it. `stats`: mi_stats rows of one network,
    every estimator to draw; `domain`: (max I(X;T), max I(T;Y))."""
    columns = ["estimator", "layer", "layer_name", "phase", "epoch", "global_epoch", "mi_xt_mean", "mi_ty_mean", "n"]
    drawn, note = thin(stats.select(columns), ["estimator", "layer"], max_epochs)
    estimators = estimator_order(drawn.get_column("estimator").unique().to_list())
    pick = alt.selection_point(name=ESTIMATOR_PICK, fields=["estimator"], bind="legend")
    highlight = alt.condition(alt.param(ESTIMATOR_PICK), alt.value(0.85), alt.value(DIMMED))
    axes = {} if domain is None else {"x": [0, domain[0]], "y": [0, domain[1]]}
    base = alt.Chart().encode(
        x=alt.X(
            "mi_xt_mean:Q",
            title="I(X;T) (bits)",
            scale=alt.Scale(zero=True, **({"domain": axes["x"], "nice": False} if axes else {})),
        ),
        y=alt.Y(
            "mi_ty_mean:Q",
            title="I(T;Y) (bits)",
            scale=alt.Scale(zero=True, **({"domain": axes["y"], "nice": False} if axes else {})),
        ),
        color=_estimator_color(estimators),
        opacity=highlight,
    )
    curves = base.mark_line(strokeWidth=1.3).encode(detail="layer:O", order="global_epoch:Q").add_params(pick)
    points = base.mark_point(size=28, filled=True).encode(
        shape=alt.Shape("layer:O", title="layer"),
        tooltip=[
            alt.Tooltip("estimator:N"),
            alt.Tooltip("layer:O"),
            alt.Tooltip("layer_name:N", title="layer name"),
            alt.Tooltip("phase:N"),
            alt.Tooltip("epoch:Q"),
            alt.Tooltip("mi_xt_mean:Q", title="I(X;T)", format=".3f"),
            alt.Tooltip("mi_ty_mean:Q", title="I(T;Y)", format=".3f"),
            alt.Tooltip("n:Q", title="repetitions"),
        ],
    )
    return alt.layer(curves, points, data=_values(drawn)).properties(
        title=_title(title, ["mean over repetitions; colour: estimator, shape: layer", note]),
        width=width,
        height=height,
    )


def estimator_gap(
    gaps: pl.DataFrame,
    quantity: str,
    title: str,
    max_epochs: int = MAX_EPOCHS,
    *,
    domain: tuple[float, float] | None = None,
    width: int | str = WIDTH,
    height: int = HEIGHT - 100,
) -> alt.LayerChart:
    """One estimator's gap to the exact values ("mi_xt" or "mi_ty": estimate - exact, bits)
    per layer against epoch, a rule at 0, with the layer legend of the planes. `gaps`: one
    estimator's rows of compare.gaps; `domain`: the gap axis's (low, high), shared with the
    estimators drawn beside it."""
    short = {"mi_xt": "xt", "mi_ty": "ty"}[quantity]
    label = {"mi_xt": "I(X;T)", "mi_ty": "I(T;Y)"}[quantity]
    columns = ["layer", "layer_name", "phase", "epoch", "global_epoch", f"estimate_{short}", f"exact_{short}"]
    drawn, note = thin(gaps.select(*columns, f"gap_{short}", "points"), ["layer"], max_epochs)
    values = {} if domain is None else {"domain": list(domain), "nice": False}
    line = (
        alt.Chart()
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("global_epoch:Q", title=_epoch_axis(gaps), scale=alt.Scale(nice=False)),
            y=alt.Y(f"gap_{short}:Q", title=f"{label} gap (bits)", scale=alt.Scale(**values)),
            color=_layer_color(),
            opacity=_highlight(1.0),
            tooltip=[
                alt.Tooltip("layer:O"),
                alt.Tooltip("layer_name:N", title="layer name"),
                alt.Tooltip("phase:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip(f"gap_{short}:Q", title=f"{label} gap", format=".4f"),
                alt.Tooltip(f"estimate_{short}:Q", title=f"{label} estimate", format=".3f"),
                alt.Tooltip(f"exact_{short}:Q", title=f"{label} exact", format=".3f"),
                alt.Tooltip("points:Q", title="repetitions"),
            ],
        )
        .add_params(_layer_pick())
    )
    zero = (  # one rule: the rows counted into one
        alt.Chart()
        .transform_aggregate(rows="count()")
        .mark_rule(color="#888", strokeDash=[4, 3])
        .encode(y=alt.datum(0))
    )
    return alt.layer(line, zero, data=_values(drawn)).properties(
        title=_title(f"{label} gap: {title}", ["estimate - exact, mean over repetitions, per layer", note]),
        width=width,
        height=height,
    )
