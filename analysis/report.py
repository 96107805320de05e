"""The HTML report: one self-contained file over one or more results folders; `ibray report`.

This module owns the page and is the only part of `analysis` that writes files. It runs
every aggregation in one Polars `collect_all` (so the Parquet files are scanned once), draws
the charts, and writes one HTML file with Vega, Vega-Lite and vega-embed inlined once (from
vl-convert), each chart's spec embedded as JSON and its data in one store (each data set once,
shared by the charts that draw it), rendered by vegaEmbed, so the page opens offline; a
Content-Security-Policy forbids any network request.

The page, top down: a header (what was run, how complete), the information planes in a grid
whose rows hold the groups that differ in one axis (shared scales), the variance over
repetitions, accuracy, comparisons, then the tables and the sweep files folded. `--watch`
rewrites it while trials run; `--png` and `--svg` write the charts as figures.

Everything from the results (names, values, sweep files) is escaped: text in HTML goes
through html.escape, JSON in <script> blocks has <, > and & as \\u escapes.

About 850 lines for one job, the page: its sections are small functions over the same tables,
kept beside the page they fill.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import polars as pl

from analysis import aggregate, charts, compare, phases
from analysis.aggregate import NETWORK, PLANE
from analysis.load import FLOAT_BITS, REPETITION, Results, ResultsError, load
from analysis.output import (  # noqa: F401 (OutputError, write_atomically: also imported from here)
    OutputError,
    check_writable_place,
    nearest_existing,
    refuse_inside_inputs,
    write_atomically,
)

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)


@functools.cache
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one classic script defining window.vegaEmbed."""
    import vl_convert

    return vl_convert.javascript_bundle().replace("</script", "<\\/script")


PRINT_SIZE = (360, 280)  # px, the plot area of a chart sized by the page (width "container") in --png and --svg


@dataclass
class Figure:
    slug: str  # file name of its PNG or SVG, and the div's id
    chart: alt.TopLevelMixin
    role: str = "chart"  # "plane" (a mean plane the group's brushes steer), "median", "curves", ...
    group: str | None = None  # the card it belongs to: a brush on its curves steers its planes


@dataclass
class Card:
    """One group in a grid: its title over its charts, stacked."""

    title: str
    figures: list[Figure]
    note: str = ""  # HTML under the title


@dataclass
class Grid:
    """Groups that differ in one axis, side by side in a responsive grid with shared scales."""

    key: str | None  # the group picker's value for this row; None: always shown
    title: str
    cards: list[Card]


@dataclass
class Section:
    anchor: str
    title: str
    level: int  # 2 or 3
    body: list[str | Figure | Grid] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        cards = [card for item in self.body if isinstance(item, Grid) for card in item.cards]
        return [item for item in self.body if isinstance(item, Figure)] + [f for card in cards for f in card.figures]


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
        ]
    )
    return Tables(*(frame.with_columns(pl.col(pl.Categorical).cast(pl.String)) for frame in frames))


# --- text -------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def slugify(*parts: object) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-") or "x"


def bits_label(bits: int) -> str:
    return "float32" if bits == FLOAT_BITS else f"{bits}-bit"


def bits_text() -> pl.Expr:
    """bits_label as an expression."""
    return pl.when(pl.col("bits") == FLOAT_BITS).then(pl.lit("float32")).otherwise(pl.format("{}-bit", "bits"))


def network_label(key: dict) -> str:
    return f"{key['dataset']} · {key['architecture']} · {key['activation']} · {bits_label(key['bits'])}"


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def html_table(frame: pl.DataFrame, headers: dict[str, str] | None = None, row_class: str | None = None) -> str:
    """An escaped HTML table of a small frame; `row_class` names a boolean column marking rows."""
    headers = headers or {c: c for c in frame.columns if c != row_class}
    head = "".join(f"<th>{esc(label)}</th>" for label in headers.values())
    rows = []
    for row in frame.iter_rows(named=True):  # a summary table: tens of rows, not results rows
        cells = "".join(f"<td>{esc(fmt(row[c]))}</td>" for c in headers)
        marked = ' class="warn"' if row_class and row[row_class] else ""
        rows.append(f"<tr{marked}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def pm(mean: str, std: str) -> pl.Expr:
    """'mean ± std' as text, 3 decimals; the std is left out when there is one repetition."""
    text = pl.col(mean).round(3).cast(pl.String)
    return pl.when(pl.col(std).is_null()).then(text).otherwise(pl.format("{} ± {}", text, pl.col(std).round(3)))


# --- sections ----------------------------------------------------------------------------


def summary_sections(tables: Tables, results: Results) -> list[Section]:
    sections = []
    incomplete = tables.progress.filter(pl.col("status") != "complete")
    trials_body = []
    if incomplete.height:
        names = ", ".join(f"{s}/{t} ({st})" for s, t, st in incomplete.select("sweep", "trial", "status").rows())
        trials_body.append(
            f'<p class="warn">{incomplete.height} trial(s) incomplete; the report covers them as far as '
            f"they go: {esc(names)}</p>"
        )
    trials_body.append(
        html_table(
            tables.progress.with_columns((pl.col("status") != "complete").alias("incomplete")),
            {
                "sweep": "sweep",
                "trial": "trial",
                "status": "status",
                "seeds_asked": "seeds asked",
                "seeds_written": "seeds written",
                "last_phase": "last phase",
                "last_epoch": "last epoch",
                "epochs": "epochs asked",
                "prefit_epochs": "prefit epochs asked",
            },
            row_class="incomplete",
        )
    )
    repeated = tables.repeated_seeds
    if repeated.height:
        seeds = "; ".join(
            f"seed {row['seed']} of {'/'.join(str(row[c]) for c in NETWORK)} in {row['places']} places ({row['where']})"
            for row in repeated.head(10).iter_rows(named=True)
        )
        more = f" and {repeated.height - 10} more" if repeated.height > 10 else ""
        trials_body.append(
            f'<p class="warn">{repeated.height} seed(s) were written by more than one sweep or trial, and each '
            f"counts as a repetition in the means and variances below, although the same config and seed give "
            f"the same run: {esc(seeds)}{more}. Report those sweeps apart, or give them other seeds.</p>"
        )
    sections.append(Section("trials", "Trials", 2, trials_body))
    sections.append(completeness_section(tables))

    final = tables.final.select(
        *NETWORK,
        pm("train_acc_mean", "train_acc_std").alias("train accuracy"),
        pm("test_acc_mean", "test_acc_std").alias("test accuracy"),
        pm("test_loss_mean", "test_loss_std").alias("test loss"),
        "repetitions",
        pl.format("{} {}", "last_phase", "last_epoch").alias("last epoch"),
    )
    sections.append(
        Section(
            "accuracy",
            "Final accuracies",
            2,
            ["<p>At each repetition's last epoch; mean ± standard deviation.</p>", html_table(final)],
        )
    )

    per_layer = tables.phases.join(tables.dpi, on=[*aggregate.PLANE_PHASE, "layer"], how="left").with_columns(
        pl.format("{} / {}", pl.col("dpi").fill_null(0), pl.col("checked").fill_null(0)).alias("DPI violations")
    )
    sections.append(
        Section(
            "phases",
            "Phases and DPI per layer",
            2,
            [
                f"<p>Fitting: I(T;Y) rising; compression: I(X;T) falling after its maximum; epochs within the "
                f"phase, on the mean curves at the epochs where every repetition is present, threshold {phases.DEFAULT_THRESHOLD} bits. DPI violations: "
                "(repetition, epoch) points where the layer's I(X;T) or I(T;Y) exceeds the previous layer's, "
                "of those compared.</p>",
                html_table(
                    per_layer,
                    {
                        "dataset": "dataset",
                        "architecture": "architecture",
                        "activation": "activation",
                        "bits": "bits",
                        "estimator": "estimator",
                        "phase": "phase",
                        "layer": "layer",
                        "fit_start": "fit start",
                        "fit_end": "fit end",
                        "fit_bits": "fit bits",
                        "compress_start": "compress start",
                        "compress_end": "compress end",
                        "compress_bits": "compress bits",
                        "DPI violations": "DPI violations",
                    },
                ),
            ],
        )
    )
    files = [
        f"<details><summary>{esc(path)} ({len(text.splitlines())} lines)</summary><pre>{esc(text)}</pre></details>"
        for path, text in sorted(results.sweep_files.items())
    ] or ["<p>No sweep.yaml found at or below the given paths.</p>"]
    sections.append(Section("sweeps", "Sweep files", 2, files))
    return sections


def completeness_section(tables: Tables) -> Section:
    """Per group: are all repetitions present at every measured epoch?"""
    frame = tables.completeness.with_columns(
        (pl.col("incomplete_epochs") > 0).alias("gaps"),
        pl.when(pl.col("incomplete_epochs") == 0)
        .then(pl.format("all {} repetitions at every epoch", "repetitions"))
        .otherwise(
            pl.format(
                "{} of {} epochs ({} to {}) lack repetitions: as few as {} of {}",
                "incomplete_epochs",
                "epochs",
                "first_incomplete",
                "last_incomplete",
                "fewest",
                "repetitions",
            )
        )
        .alias("completeness"),
    )
    gaps = frame.filter(pl.col("gaps")).height
    body = [
        "<p>Epochs are counted from the start of the run (prefit included). Where a repetition is "
        "missing, the mean curves are over the repetitions present there, and those epochs are left "
        "out of the phase table. <code>ibray verify</code> checks the rows of each trial against its "
        "configuration.</p>"
    ]
    if gaps:
        body.insert(0, f'<p class="warn">{gaps} group(s) lack repetitions at some epochs.</p>')
    headers = {c: c for c in PLANE} | {"repetitions": "repetitions", "epochs": "epochs", "completeness": "completeness"}
    body.append(html_table(frame, headers, row_class="gaps"))
    return Section("completeness", "Completeness", 2, body)


PAIRED_AXES = ["activation", "bits", "estimator", "architecture", "dataset"]  # tried in this order


def axis_value(axis: str, value: object) -> str:
    return bits_label(value) if axis == "bits" else str(value)


def side_by_side(keys: list[dict]) -> tuple[str | None, list[list[dict]]]:
    """Rows of groups that differ in one axis only, as the paper pairs tanh and ReLU.

    The axis is the first of PAIRED_AXES that puts two groups in one row; within a row the
    groups follow that axis (estimators exact first, bits by size). None and one group a row
    when no two groups differ in a single axis.
    """
    for axis in PAIRED_AXES:
        rows: dict[tuple, list[dict]] = {}
        for key in keys:
            rows.setdefault(tuple(key[a] for a in PLANE if a != axis), []).append(key)
        if any(len(row) > 1 for row in rows.values()):
            return axis, list(rows.values())
    return None, [[key] for key in keys]


ACTIVATION_ORDER = ["tanh", "relu"]  # the paper's order; others after them, sorted


def reading_order(keys: list[dict]) -> list[dict]:
    """Groups as the paper shows them: exact before the estimators, tanh before ReLU, bits up."""
    estimators = charts.estimator_order({key["estimator"] for key in keys})
    activations = [a for a in ACTIVATION_ORDER if a in {k["activation"] for k in keys}]
    activations += sorted({k["activation"] for k in keys} - set(activations))
    return sorted(
        keys,
        key=lambda k: (
            k["dataset"],
            k["architecture"],
            estimators.index(k["estimator"]),
            activations.index(k["activation"]),
            k["bits"],
        ),
    )


def plane_label(key: dict, leave_out: str | None = None) -> str:
    return " · ".join(axis_value(a, key[a]) for a in PLANE if a != leave_out)


def is_group(key: dict) -> pl.Expr:
    return pl.all_horizontal(pl.col(k) == v for k, v in key.items())


def extent(frame: pl.DataFrame, *columns: str) -> float:
    """The largest value of the sum of `columns` (nulls as 0), 3% added: a shared scale's end."""
    total = pl.sum_horizontal(pl.col(c).fill_null(0) for c in columns)
    largest = frame.select(total.max()).item() if frame.height else None
    return round(1.03 * (largest or 1.0), 4)


def plane_sections(tables: Tables) -> list[Section]:
    """The information planes first: a grid row per set of groups that differ in one axis, each
    group a card with its mean plane over its I(X;T) and I(T;Y) curves (brushing their epochs
    steers the plane), all with scales shared across the row; then, in the same rows, each
    group's median-deviating repetition beside the spread over repetitions (appendix B)."""
    axis, rows = side_by_side(reading_order(tables.mi_stats.select(PLANE).unique().to_dicts()))
    planes = Section("planes", "Information planes", 2)
    spread = Section("variance", "Variance over repetitions", 2)
    paired = f"side by side: groups that differ in {axis} only; " if axis else ""
    planes.body.append(
        f"<p>Mean over repetitions; {paired}scales shared within a row. Hover a point for its values, "
        "click a layer in a legend to highlight it, drag over an MI curve to show only those epochs in the "
        "plane above it (double-click to clear).</p>"
    )
    spread.body.append(
        "<p>As the paper's appendix B: the repetition whose curves lie at the median distance from the mean "
        "curves, beside the standard deviation over repetitions of each layer's I(X;T) and I(T;Y).</p>"
    )
    for row in rows:
        stats = tables.mi_stats.filter(pl.any_horizontal(is_group(key) for key in row))
        chosen_rows = tables.median_rows.filter(pl.any_horizontal(is_group(key) for key in row))
        last_epoch = float(stats.get_column("global_epoch").max())
        plane_domain = (extent(stats, "mi_xt_mean"), extent(stats, "mi_ty_mean"), last_epoch)
        median_domain = (extent(chosen_rows, "mi_xt"), extent(chosen_rows, "mi_ty"), last_epoch)
        curves_domain = {q: (last_epoch, extent(stats, f"{q}_mean", f"{q}_std")) for q in ("mi_xt", "mi_ty")}
        title = plane_label(row[0], axis) if axis else plane_label(row[0])
        key = slugify("set", title)
        mean_cards, spread_cards = [], []
        for group in row:
            own = stats.filter(is_group(group))
            label = plane_label(group)
            card_title = axis_value(axis, group[axis]) if axis else label
            slug = slugify("plane", *group.values())
            mean_cards.append(
                Card(
                    card_title,
                    [
                        Figure(
                            f"{slug}-mean",
                            charts.information_plane(
                                own, f"Information plane: {label}", domain=plane_domain, width="container", height=380
                            ),
                            "plane",
                            slug,
                        ),
                        *(
                            Figure(
                                f"{slug}-{q}",
                                charts.mi_curves(own, q, label, domain=curves_domain[q], width="container", height=130),
                                "curves",
                                slug,
                            )
                            for q in ("mi_xt", "mi_ty")
                        ),
                    ],
                    f'<p class="note">{own.get_column("repetitions").max()} repetition(s), epochs 0 to {own.get_column("global_epoch").max()}</p>',
                )
            )
            median = tables.median.filter(is_group(group))
            if not median.height:
                continue
            chosen = median.row(0, named=True)
            who = f"sweep {chosen['sweep']}, trial {chosen['trial']}, seed {chosen['seed']}"
            figures = [
                Figure(
                    f"{slug}-median",
                    charts.information_plane(
                        tables.median_rows.filter(is_group(group)),
                        f"Median-deviating repetition ({who}, of {chosen['repetitions']}): {label}",
                        "mi_xt",
                        "mi_ty",
                        domain=median_domain,
                        width="container",
                        height=300,
                    ),
                    "median",
                    slug,
                )
            ]
            if chosen["repetitions"] > 1:
                figures.append(
                    Figure(
                        f"{slug}-spread",
                        charts.spread_over_epochs(own, f"Spread: {label}", width="container", height=180),
                        "spread",
                        slug,
                    )
                )
            spread_cards.append(Card(card_title, figures))
        planes.body.append(Grid(key, title, mean_cards))
        if spread_cards:
            spread.body.append(Grid(key, title, spread_cards))
    return [planes, spread]


def accuracy_section(tables: Tables) -> Section:
    """Train and test accuracy over epochs, one card per network, in the same kind of grid."""
    networks = tables.metrics_stats.select(NETWORK).unique().sort(NETWORK).to_dicts()
    cards = []
    for network in networks:
        label = network_label(network)
        metrics = tables.metrics_stats.filter(*[pl.col(k) == v for k, v in network.items()])
        chart = charts.accuracy(metrics, f"Accuracy: {label}").properties(width="container", height=200)
        cards.append(Card(label, [Figure(slugify("net", *network.values(), "accuracy"), chart, "accuracy")]))
    return Section("accuracy-curves", "Accuracy over epochs", 2, [Grid(None, "", cards)] if cards else [])


def comparison_sections(tables: Tables) -> list[Section]:
    """Exact MI against binning (appendix A) and across bit widths (appendix C), where present."""
    body_estimators, body_bits = [], []
    stats = tables.mi_stats
    for key in stats.select("dataset", "architecture", "activation").unique().sort(pl.all()).to_dicts():
        same = stats.filter(*[pl.col(k) == v for k, v in key.items()])
        label = " · ".join(str(v) for v in key.values())
        variants = same.select("estimator", "bits").unique()
        if variants.get_column("estimator").str.starts_with("bin").any() and variants.height > 1:
            same_variant = same.with_columns(pl.format("{}, {}", "estimator", bits_text()).alias("variant"))
            order_frame = variants.with_columns(
                pl.col("estimator").str.extract(r"(\d+)").cast(pl.Int64).fill_null(0).alias("bins")
            ).sort("bins", "bits")
            order = [f"{e}, {bits_label(b)}" for e, b in order_frame.select("estimator", "bits").rows()]
            body_estimators.append(
                Figure(
                    slugify("cmp-estimator", *key.values()),
                    charts.comparison(same_variant, "variant", f"Exact against binning: {label}", order),
                )
            )
        exact = same.filter(pl.col("estimator") == "exact")
        if exact.get_column("bits").n_unique() > 1:
            body_bits.append(
                Figure(
                    slugify("cmp-bits", *key.values()),
                    charts.comparison(exact, "bits", f"Bit widths (exact MI): {label}"),
                )
            )
    sections = []
    if body_estimators:
        sections.append(Section("cmp-estimators", "Exact MI against binning", 2, body_estimators))
    if body_bits:
        sections.append(Section("cmp-bits", "Bit widths", 2, body_bits))
    return sections


def referee_sections(tables: Tables) -> list[Section]:
    """The referee table, where some network has estimators besides exact."""
    if tables.referee.height == 0:
        return []
    body = [f"<p>{esc(compare.legend())}</p>", html_table(compare.display(tables.referee))]
    return [Section("estimators-vs-exact", "Estimators against the exact values", 2, body)]


# --- page --------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1880px; padding: 0 1.5em 2em; color: #222; }
header { border-bottom: 1px solid #ddd; padding: 0.6em 0 0.4em; }
h1 { margin: 0.2em 0; font-size: 1.5em; }
h1 .badge { font-size: 0.55em; vertical-align: middle; padding: 0.15em 0.6em; border-radius: 1em; margin-left: 0.6em; }
.badge.complete { background: #d8f0dc; color: #1d5e2a; } .badge.partial { background: #fff3cd; color: #7a5a00; }
dl.facts { display: flex; flex-wrap: wrap; gap: 0.4em 2em; margin: 0.4em 0; }
dl.facts div { min-width: 8em; } dl.facts dt { font-size: 0.75em; color: #666; text-transform: uppercase; }
dl.facts dd { margin: 0; font-size: 1.05em; }
p.meta { font-size: 0.8em; color: #666; margin: 0.3em 0; }
nav ul { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; list-style: none; padding: 0; margin: 0.4em 0; font-size: 0.9em; }
label.picker { font-size: 0.9em; }
.set { margin: 0.6em 0 1.6em; } .set > h3 { margin: 0.3em 0; font-size: 1.05em; color: #444; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 540px), 1fr)); gap: 1em 1.5em; }
.grid > .card:only-child { max-width: 960px; }
.card { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.4em 0.8em 0.6em; min-width: 0; }
.card > h4 { margin: 0.2em 0; font-size: 1.1em; } p.note { margin: 0; font-size: 0.8em; color: #666; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; }
tr.warn td, p.warn { background: #fff3cd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-family: monospace; }
.chart { margin: 0.6em 0 1em; min-height: 50px; width: 100%; }
.chart .vega-embed { width: 100%; }
"""

# Each chart's data is stored once in the page (#ibray-data, columns and rows) and handed to
# each view as its own objects. A brush on a card's MI curves sets its planes' epoch range.
DRIVER = (
    """
(function () {
  var data = JSON.parse(document.getElementById("ibray-data").textContent);
  function rows(name) {
    var table = data[name];
    return table.rows.map(function (row) {
      var item = {};
      table.fields.forEach(function (f, i) { item[f] = row[i]; });
      return item;
    });
  }
  var views = window.ibrayViews = {};
  function steer(group, range) {
    document.querySelectorAll('div.chart[data-role="plane"][data-group="' + group + '"]').forEach(function (div) {
      var view = views[div.id];
      if (view) view.signal("EPOCH_FROM", range ? range[0] : FIRST).signal("EPOCH_TO", range ? range[1] : LAST).runAsync();
    });
  }
  document.querySelectorAll("div.chart").forEach(function (div) {
    var spec = JSON.parse(document.getElementById(div.getAttribute("data-spec")).textContent);
    if (spec.data && data[spec.data.name]) {
      spec.datasets = {};
      spec.datasets[spec.data.name] = rows(spec.data.name);
    }
    vegaEmbed(div, spec, {actions: false, renderer: "svg"}).then(function (result) {
      views[div.id] = result.view;
      var group = div.getAttribute("data-group");
      if (group && (spec.params || []).some(function (p) { return p.name === "EPOCH_BRUSH"; })) {
        result.view.addSignalListener("EPOCH_BRUSH", function (name, value) { steer(group, value && value.global_epoch); });
      }
      div.setAttribute("data-rendered", "true");
    }).catch(function (error) {
      div.setAttribute("data-rendered", "error");
      div.textContent = "This chart failed to render: " + error;
      console.error(error);
    });
  });
  var picker = document.getElementById("group-picker");
  if (picker) picker.addEventListener("change", function () {
    document.querySelectorAll("[data-set]").forEach(function (set) {
      set.hidden = picker.value !== "" && set.getAttribute("data-set") !== picker.value;
    });
    window.dispatchEvent(new Event("resize"));
  });
})();
""".replace("EPOCH_FROM", charts.EPOCH_FROM)
    .replace("EPOCH_TO", charts.EPOCH_TO)
    .replace("EPOCH_BRUSH", charts.EPOCH_BRUSH)
    .replace("FIRST", repr(charts.ALL_EPOCHS[0]))
    .replace("LAST", repr(charts.ALL_EPOCHS[1]))
)


def script_json(value: object) -> str:
    """JSON safe inside a <script> element: no '</script>' or '<!--' can close or confuse it."""
    return (
        json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


class Page:
    """The HTML of charts, their inline data moved into one store, each data set once."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def chart(self, figure: Figure) -> str:
        spec = figure.chart.to_dict()
        found = spec.pop("datasets", {})  # Altair names each frame's rows by their hash
        values = spec.get("data", {}).get("values")
        if values:  # data too large for a frame, inline: named the same way here
            text = json.dumps(values, separators=(",", ":"))
            name = "data-" + hashlib.sha1(text.encode()).hexdigest()[:12]
            found[name] = values
            spec["data"] = {"name": name}
        for name, values in found.items():
            if name not in self.data:
                fields = list(dict.fromkeys(f for row in values for f in row))
                self.data[name] = {"fields": fields, "rows": [[row.get(f) for f in fields] for row in values]}
        group = f' data-group="{esc(figure.group)}"' if figure.group else ""
        return (
            f'<div class="chart" id="{figure.slug}" data-role="{esc(figure.role)}"{group} data-spec="spec-{figure.slug}"></div>'
            f'<script type="application/json" id="spec-{figure.slug}">{script_json(spec)}</script>'
        )

    def grid(self, grid: Grid) -> str:
        cards = "".join(
            f'<div class="card"><h4>{esc(card.title)}</h4>{card.note}{"".join(self.chart(f) for f in card.figures)}</div>'
            for card in grid.cards
        )
        title = f"<h3>{esc(grid.title)}</h3>" if grid.title else ""
        picked = f' data-set="{esc(grid.key)}"' if grid.key else ""
        return f'<div class="set"{picked}>{title}<div class="grid">{cards}</div></div>'


def render(sections: list[Section], heading: str, header: str, refresh: int | None = None) -> str:
    page, parts = Page(), []
    toc = "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in sections if s.level == 2)
    for section in sections:
        parts.append(f'<h{section.level} id="{section.anchor}">{esc(section.title)}</h{section.level}>')
        for item in section.body:
            parts.append(
                page.chart(item) if isinstance(item, Figure) else page.grid(item) if isinstance(item, Grid) else item
            )
    reload = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">{reload}'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(heading)}</title><style>{STYLE}</style>"
        f"<script>{javascript_bundle()}</script></head><body>"
        f"<header>{header}<nav><ul>{toc}</ul></nav>{group_picker(sections)}</header>"
        f"{''.join(parts)}"
        f'<script type="application/json" id="ibray-data">{script_json(page.data)}</script>'
        f"<script>{DRIVER}</script></body></html>\n"
    )


PICKER_FROM = 4  # rows of planes from which the page offers a picker


def group_picker(sections: list[Section]) -> str:
    rows = list(dict.fromkeys((i.key, i.title) for s in sections for i in s.body if isinstance(i, Grid) and i.key))
    if len(rows) < PICKER_FROM:
        return ""
    options = "".join(f'<option value="{esc(key)}">{esc(title)}</option>' for key, title in rows)
    return (
        '<label class="picker">Show: <select id="group-picker"><option value="">every group '
        f"({len(rows)} rows)</option>{options}</select></label>"
    )


def header(tables: Tables, paths: list, seconds: str, watch: int | None = None) -> str:
    """What was run, at a glance: sweeps, groups, repetitions, epochs, completeness."""
    progress = tables.progress
    complete = progress.filter(pl.col("status") == "complete").height
    gaps = tables.completeness.filter(pl.col("incomplete_epochs") > 0).height
    partial = complete < progress.height
    repetitions = tables.completeness.get_column("repetitions")
    epochs = tables.mi_stats.group_by(PLANE).agg(pl.col("global_epoch").max()).get_column("global_epoch")
    span = lambda values: f"{values.min()}" if values.min() == values.max() else f"{values.min()} to {values.max()}"  # noqa: E731
    prefit = tables.mi_stats.filter(pl.col("phase") == "prefit").height > 0
    facts = {
        "sweeps": ", ".join(sorted(set(progress.get_column("sweep").drop_nulls().to_list()))) or "–",
        "groups": f"{tables.completeness.height} ({tables.mi_stats.select(NETWORK).unique().height} network(s))",
        "repetitions": f"{span(repetitions)} per group, {progress.get_column('seeds_written').sum()} in all",
        "epochs": f"{span(epochs)}{' (prefit, then train)' if prefit else ''}",
        "trials": f"{complete} of {progress.height} complete",
        "completeness": "every repetition at every epoch"
        if not gaps
        else f"{gaps} group(s) lack repetitions at some epochs",
    }
    badge = "partial" if partial else "complete"
    live = (
        f" Rewritten every {watch} s while trials run (this page reloads itself); last at {time.strftime('%H:%M:%S')}."
        if watch and partial
        else ""
    )
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts.items())
    return (
        f'<h1>ibray report<span class="badge {badge}">{badge}</span></h1><dl class="facts">{items}</dl>'
        f'<p class="meta">Read from {esc(", ".join(str(p) for p in paths))}; built in {seconds} s.{esc(live)}</p>'
    )


def unique_slugs(sections: list[Section]) -> None:
    """Make anchors and chart ids unique (different names can slugify alike)."""
    seen: dict[str, int] = {}

    def fresh(slug: str) -> str:
        seen[slug] = seen.get(slug, 0) + 1
        return slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"

    for section in sections:
        section.anchor = fresh(section.anchor)
        for figure in section.figures():
            figure.slug = fresh(figure.slug)


def build_report(
    paths: list[str | Path],
    out: str | Path = "report.html",
    png_dir: str | Path | None = None,
    svg_dir: str | Path | None = None,
    watch: int | None = None,
) -> Path:
    """Write one self-contained HTML report over the results below `paths`; returns its path.

    With `png_dir`, also writes each chart as <png_dir>/<chart id>.png; with `svg_dir`, each
    plane as <svg_dir>/<chart id>.svg. `watch`: the seconds between rewrites, said on the page
    (which then reloads itself) while some trial is incomplete. Raises ResultsError.
    """
    return _build(paths, out, png_dir, svg_dir, watch)[0]


def _build(paths, out, png_dir=None, svg_dir=None, watch=None) -> tuple[Path, bool]:
    """build_report, and whether every trial was complete."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    started = time.time()
    results = load(paths)
    tables = compute(results)
    if tables.mi_stats.height == 0:
        raise ResultsError(f"{', '.join(map(str, paths))}: the MI tables hold no rows; nothing to report")
    *summary, sweep_files = summary_sections(tables, results)
    # charts first, planes leading; then the tables; the sweep files, folded, last
    sections = (
        plane_sections(tables)
        + [accuracy_section(tables)]
        + comparison_sections(tables)
        + summary
        + referee_sections(tables)
        + [sweep_files]
    )
    sections = [s for s in sections if s.body]
    unique_slugs(sections)
    complete = tables.progress.filter(pl.col("status") != "complete").height == 0
    page = render(sections, "ibray report", header(tables, paths, "{seconds}", watch), None if complete else watch)
    page = page.replace("{seconds}", f"{time.time() - started:.1f}", 1)
    out = Path(out)
    write_atomically(out, page.encode("utf-8"))
    figures = [figure for section in sections for figure in section.figures()]
    if png_dir is not None:
        write_figures(figures, Path(png_dir), "png")
    if svg_dir is not None:
        write_figures([f for f in figures if f.role in ("plane", "median")], Path(svg_dir), "svg")
    return out, complete


def print_spec(figure: Figure) -> dict:
    """The chart's spec at a fixed size: a chart sized by the page gets PRINT_SIZE."""
    spec = figure.chart.to_dict()
    if spec.get("width") == "container":
        spec["width"], spec["height"] = PRINT_SIZE
    return spec


def write_figures(figures: list[Figure], folder: Path, kind: str) -> list[Path]:
    """Each figure as <folder>/<slug>.<kind> ("png" at twice the size, or "svg"), atomically."""
    import vl_convert

    written = []
    for figure in figures:
        path = folder / f"{figure.slug}.{kind}"
        spec = print_spec(figure)
        data = (
            vl_convert.vegalite_to_png(spec, scale=2)
            if kind == "png"
            else vl_convert.vegalite_to_svg(spec).encode("utf-8")
        )
        write_atomically(path, data)
        written.append(path)
    return written


def write_pngs(figures: list[Figure], folder: Path) -> list[Path]:
    return write_figures(figures, folder, "png")


def watch_report(
    paths: list[str], out: str, seconds: int, png_dir: str | None = None, svg_dir: str | None = None
) -> Path:
    """Rewrite the report every `seconds` from what has been written until every trial is
    complete (then once more, final), or until Ctrl-C (KeyboardInterrupt reaches the caller).
    An error after the first report is said on stderr and the earlier report stays."""
    first = True
    while True:
        try:
            path, complete = _build(paths, out, png_dir, svg_dir, seconds)
        except ResultsError as error:
            if first:
                raise
            print(f"ibray report: not rewritten this time: {error}", file=sys.stderr, flush=True)
        else:
            state = "complete" if complete else "partial"
            print(f"{time.strftime('%H:%M:%S')} wrote {path} ({state}, {path.stat().st_size / 1e6:.1f} MB)", flush=True)
            if complete:
                return path
        first = False
        time.sleep(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ibray report", description="Build one self-contained HTML report from ibray results."
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="trial, sweep or results folders")
    parser.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    parser.add_argument("--png", metavar="DIR", default=None, help="also write each chart as a PNG into DIR")
    parser.add_argument(
        "--svg", metavar="DIR", default=None, help="also write each information plane as an SVG into DIR"
    )
    parser.add_argument(
        "--watch",
        metavar="SECONDS",
        type=int,
        default=None,
        help="rewrite the report every SECONDS until every trial is complete (Ctrl-C stops, exit 130)",
    )
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch < 1:
        print(
            f"ibray report: error: --watch {args.watch}: give the seconds between rewrites, at least 1", file=sys.stderr
        )
        return 2
    try:
        check_outputs(args.output, args.png, args.results, args.svg)
        if args.watch is not None:
            out = watch_report(args.results, args.output, args.watch, args.png, args.svg)
        else:
            out = build_report(args.results, args.output, args.png, args.svg)
    except (ResultsError, OutputError) as error:
        print(f"ibray report: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ibray report: interrupted; {args.output} holds the last report written", file=sys.stderr)
        return 130
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def check_outputs(output: str, png_dir: str | None, inputs: list[str] = (), svg_dir: str | None = None) -> None:
    """Refuse -o, --png and --svg paths that cannot be written, before the report is built:
    either all can be written or nothing is (the HTML would otherwise be written before a bad
    --png fails); and any that is one of the `inputs` or lies inside an input folder: the report
    would replace results it reads (a Parquet part, trial.json) or add files among them."""
    out = Path(output)
    folders = {"--png": png_dir, "--svg": svg_dir}
    for option, given in (("-o", output), *folders.items()):
        if given is not None:
            refuse_inside_inputs(option, given, inputs, ".html" if option == "-o" else f"-{option[2:]}")
    try:
        if out.is_dir() or output.endswith(("/", os.sep)):
            raise OutputError(f"-o {output}: names a folder; give the HTML file to write, e.g. {out / 'report.html'}")
        check_writable_place("-o", output, nearest_existing(out.absolute().parent))
        if os.path.lexists(out) and not os.access(out, os.W_OK):
            raise OutputError(f"-o {output}: the file is read-only; pick another -o")
        for option, given in folders.items():
            if given is None:
                continue
            folder = Path(given)
            kind = option[2:].upper()
            if folder.absolute() == out.absolute() or out.absolute() in folder.absolute().parents:
                raise OutputError(
                    f"{option} {given}: the HTML file goes to {output}; give {option} a folder of its own"
                )
            if os.path.lexists(folder) and not folder.is_dir():
                raise OutputError(f"{option} {given}: is a file, not a folder; give a folder for the {kind} files")
            check_writable_place(option, given, folder if folder.is_dir() else nearest_existing(folder.absolute()))
    except OSError as error:
        raise OutputError(
            f"{error.filename or output}: cannot be read ({error.strerror or error}); pick another output path"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
