"""The HTML report: one self-contained file over one or more results folders; `ibray report`.

This module owns the page and is the only part of `analysis` that writes files. It runs
every aggregation in one Polars `collect_all` (so the Parquet files are scanned once), draws
the charts, and writes one HTML file with Vega, Vega-Lite and vega-embed inlined once (from
vl-convert), each chart's spec embedded as JSON and rendered by vegaEmbed, so the page opens
offline; a Content-Security-Policy forbids any network request.

Everything from the results (names, values, sweep files) is escaped: text in HTML goes
through html.escape, JSON in <script> blocks has <, > and & as \\u escapes.

About 500 lines for one job, the page: its sections are small functions over the same tables,
kept beside the page they fill.
"""

from __future__ import annotations

import argparse
import functools
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


@dataclass
class Figure:
    slug: str  # file name of its PNG, and the div's id
    chart: alt.TopLevelMixin


@dataclass
class Section:
    anchor: str
    title: str
    level: int  # 2 or 3
    body: list[str | Figure] = field(default_factory=list)


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
    mi, metrics = pl.collect_all(
        [results.mi.select(mi_columns).with_columns(slim), results.metrics.with_columns(slim)]
    )
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
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


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
                "sweep": "sweep", "trial": "trial", "status": "status", "seeds_asked": "seeds asked",
                "seeds_written": "seeds written", "last_phase": "last phase", "last_epoch": "last epoch",
                "epochs": "epochs asked", "prefit_epochs": "prefit epochs asked",
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
        Section("accuracy", "Final accuracies", 2, ["<p>At each repetition's last epoch; mean ± standard deviation.</p>", html_table(final)])
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
                        "dataset": "dataset", "architecture": "architecture", "activation": "activation", "bits": "bits",
                        "estimator": "estimator", "phase": "phase", "layer": "layer", "fit_start": "fit start",
                        "fit_end": "fit end", "fit_bits": "fit bits", "compress_start": "compress start",
                        "compress_end": "compress end", "compress_bits": "compress bits", "DPI violations": "DPI violations",
                    },
                ),
            ],
        )
    )
    files = [
        f"<h3>{esc(path)}</h3><pre>{esc(text)}</pre>" for path, text in sorted(results.sweep_files.items())
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
                "incomplete_epochs", "epochs", "first_incomplete", "last_incomplete", "fewest", "repetitions",
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


def group_sections(tables: Tables) -> list[Section]:
    sections = []
    networks = tables.mi_stats.select(NETWORK).unique().sort(NETWORK).to_dicts()
    for network in networks:
        label = network_label(network)
        anchor = slugify("net", *network.values())
        section = Section(anchor, label, 2)
        in_network = [pl.col(k) == v for k, v in network.items()]
        metrics = tables.metrics_stats.filter(*in_network)
        if metrics.height:
            section.body.append(Figure(f"{anchor}-accuracy", charts.accuracy(metrics, f"Accuracy: {label}")))
        sections.append(section)
        estimators = tables.mi_stats.filter(*in_network).get_column("estimator").unique().to_list()
        for estimator in charts.estimator_order(estimators):
            where = [*in_network, pl.col("estimator") == estimator]
            stats = tables.mi_stats.filter(*where)
            title = f"{label} · {estimator}"
            sub = Section(f"{anchor}-{slugify(estimator)}", f"{estimator}", 3)
            sub.body.append(Figure(f"{sub.anchor}-plane", charts.information_plane(stats, f"Information plane: {title}")))
            sub.body.append(Figure(f"{sub.anchor}-mi", charts.mi_over_epochs(stats, f"MI per layer: {title}")))
            median = tables.median.filter(*where)
            if median.height:
                chosen = median.row(0, named=True)
                rows = tables.median_rows.filter(*where)
                who = f"sweep {chosen['sweep']}, trial {chosen['trial']}, seed {chosen['seed']}"
                sub.body.append(
                    Figure(
                        f"{sub.anchor}-median",
                        charts.information_plane(
                            rows, f"Median-deviating repetition ({who}, of {chosen['repetitions']}): {title}", "mi_xt", "mi_ty"
                        ),
                    )
                )
            sections.append(sub)
    return sections


def comparison_sections(tables: Tables) -> list[Section]:
    """Exact MI against binning (appendix A) and across bit widths (appendix C), where present."""
    body_estimators, body_bits = [], []
    stats = tables.mi_stats
    for key in stats.select("dataset", "architecture", "activation").unique().sort(pl.all()).to_dicts():
        same = stats.filter(*[pl.col(k) == v for k, v in key.items()])
        label = " · ".join(str(v) for v in key.values())
        variants = same.select("estimator", "bits").unique()
        if variants.get_column("estimator").str.starts_with("bin").any() and variants.height > 1:
            same_variant = same.with_columns(
                pl.format("{}, {}", "estimator", bits_text()).alias("variant")
            )
            order_frame = variants.with_columns(
                pl.col("estimator").str.extract(r"(\d+)").cast(pl.Int64).fill_null(0).alias("bins")
            ).sort("bins", "bits")
            order = [f"{e}, {bits_label(b)}" for e, b in order_frame.select("estimator", "bits").rows()]
            body_estimators.append(
                Figure(slugify("cmp-estimator", *key.values()), charts.comparison(same_variant, "variant", f"Exact against binning: {label}", order))
            )
        exact = same.filter(pl.col("estimator") == "exact")
        if exact.get_column("bits").n_unique() > 1:
            body_bits.append(Figure(slugify("cmp-bits", *key.values()), charts.comparison(exact, "bits", f"Bit widths (exact MI): {label}")))
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
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; }
tr.warn td, p.warn { background: #fff3cd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
.chart { margin: 1em 0 2em; min-height: 50px; }
nav ul { line-height: 1.5; }
"""

DRIVER = """
(function () {
  document.querySelectorAll("div.chart").forEach(function (div) {
    var spec = JSON.parse(document.getElementById(div.getAttribute("data-spec")).textContent);
    vegaEmbed(div, spec, {actions: false, renderer: "svg"}).then(function () {
      div.setAttribute("data-rendered", "true");
    }).catch(function (error) {
      div.setAttribute("data-rendered", "error");
      div.textContent = "This chart failed to render: " + error;
      console.error(error);
    });
  });
})();
"""


def script_json(value: object) -> str:
    """JSON safe inside a <script> element: no '</script>' or '<!--' can close or confuse it."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(sections: list[Section], heading: str, intro: str) -> str:
    toc, parts = [], []
    for section in sections:
        toc.append(f'<li class="l{section.level}"><a href="#{section.anchor}">{esc(section.title)}</a></li>')
        parts.append(f'<h{section.level} id="{section.anchor}">{esc(section.title)}</h{section.level}>')
        for item in section.body:
            if isinstance(item, Figure):
                spec = script_json(item.chart.to_dict())
                parts.append(
                    f'<div class="chart" id="{item.slug}" data-spec="spec-{item.slug}"></div>'
                    f'<script type="application/json" id="spec-{item.slug}">{spec}</script>'
                )
            else:
                parts.append(item)
    nested, depth = [], 2
    for section, item in zip(sections, toc):
        if section.level > depth:
            nested.append("<ul>")
        elif section.level < depth:
            nested.append("</ul>")
        depth = section.level
        nested.append(item)
    nested.extend("</ul>" for _ in range(depth - 2))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(heading)}</title><style>{STYLE}</style>"
        f"<script>{javascript_bundle()}</script></head><body>"
        f"<h1>{esc(heading)}</h1>{intro}"
        f'<nav><h2>Contents</h2><ul>{"".join(nested)}</ul></nav>'
        f'{"".join(parts)}<script>{DRIVER}</script></body></html>\n'
    )


def unique_slugs(sections: list[Section]) -> None:
    """Make anchors and chart ids unique (different names can slugify alike)."""
    seen: dict[str, int] = {}

    def fresh(slug: str) -> str:
        seen[slug] = seen.get(slug, 0) + 1
        return slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"

    for section in sections:
        section.anchor = fresh(section.anchor)
        for item in section.body:
            if isinstance(item, Figure):
                item.slug = fresh(item.slug)


def build_report(paths: list[str | Path], out: str | Path = "report.html", png_dir: str | Path | None = None) -> Path:
    """Write one self-contained HTML report over the results below `paths`; returns its path.

    With `png_dir`, also writes each chart as <png_dir>/<chart id>.png. Raises ResultsError.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    started = time.time()
    results = load(paths)
    tables = compute(results)
    if tables.mi_stats.height == 0:
        raise ResultsError(f"{', '.join(map(str, paths))}: the MI tables hold no rows; nothing to report")
    sections = summary_sections(tables, results) + referee_sections(tables) + comparison_sections(tables) + group_sections(tables)
    unique_slugs(sections)
    groups = tables.mi_stats.select(PLANE).unique().height
    repetitions = tables.progress.get_column("seeds_written").sum()
    intro = (
        f"<p>{groups} group(s), {repetitions} repetition(s) from {tables.progress.height} trial(s), "
        f"{len(results.files['mi'])} MI and {len(results.files['metrics'])} metrics files, read from: "
        f'{esc(", ".join(str(p) for p in paths))}. Built in {{seconds}} s.</p>'
    )
    figures = [item for section in sections for item in section.body if isinstance(item, Figure)]
    page = render(sections, "ibray report", intro)
    page = page.replace("{seconds}", f"{time.time() - started:.1f}", 1)
    out = Path(out)
    write_atomically(out, page.encode("utf-8"))
    if png_dir is not None:
        write_pngs(figures, Path(png_dir))
    return out


def write_pngs(figures: list[Figure], folder: Path) -> list[Path]:
    import vl_convert

    written = []
    for figure in figures:
        path = folder / f"{figure.slug}.png"
        write_atomically(path, vl_convert.vegalite_to_png(figure.chart.to_dict(), scale=2))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ibray report", description="Build one self-contained HTML report from ibray results.")
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="trial, sweep or results folders")
    parser.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    parser.add_argument("--png", metavar="DIR", default=None, help="also write each chart as a PNG into DIR")
    args = parser.parse_args(argv)
    try:
        check_outputs(args.output, args.png, args.results)
        out = build_report(args.results, args.output, args.png)
    except (ResultsError, OutputError) as error:
        print(f"ibray report: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def check_outputs(output: str, png_dir: str | None, inputs: list[str] = ()) -> None:
    """Refuse -o and --png paths that cannot be written, before the report is built: either both
    can be written or nothing is (the HTML would otherwise be written before a bad --png fails);
    and any that is one of the `inputs` or lies inside an input folder: the report would
    replace results it reads (a Parquet part, trial.json) or add files among them."""
    out = Path(output)
    for option, given in (("-o", output), ("--png", png_dir)):
        if given is not None:
            refuse_inside_inputs(option, given, inputs, ".html" if option == "-o" else "-png")
    try:
        if out.is_dir() or output.endswith(("/", os.sep)):
            raise OutputError(f"-o {output}: names a folder; give the HTML file to write, e.g. {out / 'report.html'}")
        check_writable_place("-o", output, nearest_existing(out.absolute().parent))
        if os.path.lexists(out) and not os.access(out, os.W_OK):
            raise OutputError(f"-o {output}: the file is read-only; pick another -o")
        if png_dir is None:
            return
        png = Path(png_dir)
        if png.absolute() == out.absolute() or out.absolute() in png.absolute().parents:
            raise OutputError(f"--png {png_dir}: the HTML file goes to {output}; give --png a folder of its own")
        if os.path.lexists(png) and not png.is_dir():
            raise OutputError(f"--png {png_dir}: is a file, not a folder; give a folder for the PNG files")
        check_writable_place("--png", png_dir, png if png.is_dir() else nearest_existing(png.absolute()))
    except OSError as error:
        raise OutputError(f"{error.filename or output}: cannot be read ({error.strerror or error}); pick another output path") from None


if __name__ == "__main__":
    sys.exit(main())
