"""The report's page: its sections, built from `Tables`, top down.

This module owns what the page shows: a header (what was run, how complete), the information
planes in a grid whose rows hold the groups that differ in one axis (shared scales), the
variance over repetitions, accuracy, comparisons, each estimator against the exact values
(planes overlaid, gaps per layer over epochs, the referee table), then the tables and the
sweep files folded. Each section is a small function over the same tables; `page_sections`
puts them in order and `header` says what was run. It writes nothing: page.py turns the
sections into HTML.
"""

from __future__ import annotations

import time

import polars as pl

from analysis import aggregate, charts, compare, phases
from analysis.aggregate import NETWORK, PLANE
from analysis.load import FLOAT_BITS, Results
from analysis.page import Card, Figure, Grid, Section, esc, html_table, slugify, unique_slugs
from analysis.tables import Tables


def bits_label(bits: int) -> str:
    return "float32" if bits == FLOAT_BITS else f"{bits}-bit"


def bits_text() -> pl.Expr:
    """bits_label as an expression."""
    return pl.when(pl.col("bits") == FLOAT_BITS).then(pl.lit("float32")).otherwise(pl.format("{}-bit", "bits"))


def network_label(key: dict) -> str:
    return f"{key['dataset']} · {key['architecture']} · {key['activation']} · {bits_label(key['bits'])}"


def pm(mean: str, std: str) -> pl.Expr:
    """'mean ± std' as text, 3 decimals; the std is left out when there is one repetition."""
    text = pl.col(mean).round(3).cast(pl.String)
    return pl.when(pl.col(std).is_null()).then(text).otherwise(pl.format("{} ± {}", text, pl.col(std).round(3)))


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


def gap_extent(frame: pl.DataFrame, column: str) -> tuple[float, float]:
    """A gap axis's (low, high): 0 and every gap in `column` inside it, 3% added."""
    low, high = frame.select(pl.col(column).min().alias("low"), pl.col(column).max().alias("high")).row(0)
    low, high = min(low or 0.0, 0.0), max(high or 0.0, 0.0)
    if high - low < 1e-9:  # no gap anywhere: a small axis around 0
        return (-0.05, 0.05)
    return (round(1.03 * low, 4), round(1.03 * high, 4))


def estimator_grids(tables: Tables) -> list[Grid]:
    """Per network with exact values and other estimators: its mean planes, exact and each
    estimator overlaid, then a card per estimator with its I(X;T) and I(T;Y) gap to the exact
    values per layer over epochs, all with scales shared across the row."""
    grids = []
    networks = tables.gaps.select(NETWORK).unique().sort(NETWORK).to_dicts()
    for network in networks:
        gaps = tables.gaps.filter(is_group(network))
        estimators = charts.estimator_order(gaps.get_column("estimator").unique().to_list())
        stats = tables.mi_stats.filter(is_group(network), pl.col("estimator").is_in([compare.EXACT, *estimators]))
        label = network_label(network)
        slug = slugify("estimators", *network.values())
        plane = charts.estimators_plane(
            stats,
            f"Exact and estimators: {label}",
            domain=(extent(stats, "mi_xt_mean"), extent(stats, "mi_ty_mean")),
            width="container",
            height=380,
        )
        cards = [Card(f"exact and {', '.join(estimators)}", [Figure(f"{slug}-plane", plane, "estimators")])]
        domains = {q: gap_extent(gaps, f"gap_{q[-2:]}") for q in ("mi_xt", "mi_ty")}
        for estimator in estimators:
            own = gaps.filter(pl.col("estimator") == estimator)
            figures = [
                Figure(
                    slugify(slug, estimator, "gap", q[-2:]),
                    charts.estimator_gap(
                        own, q, f"{estimator}: {label}", domain=domains[q], width="container", height=150
                    ),
                    "gap",
                )
                for q in ("mi_xt", "mi_ty")
            ]
            last = own.get_column("global_epoch").max()
            note = f'<p class="note">{own.get_column("points").max()} repetition(s) paired, epochs 0 to {last}</p>'
            cards.append(Card(f"{estimator} − exact", figures, note))
        grids.append(Grid(None, label, cards))
    return grids


def referee_sections(tables: Tables) -> list[Section]:
    """Each estimator against the exact values, where some network has both: the planes
    overlaid and the gaps per layer over epochs (per network), then the referee table."""
    if tables.referee.height == 0:
        return []
    body = [
        "<p>Where a network ran exact beside other estimators: its mean planes overlaid (colour: estimator, "
        "shape: layer; click an estimator in the legend to highlight it), and each estimator's gap to the "
        "exact values, estimate − exact in bits, per layer over epochs (at the points where both were "
        "measured, averaged over those repetitions).</p>",
        *estimator_grids(tables),
        f"<p>{esc(compare.legend())}</p>",
        html_table(compare.display(tables.referee)),
    ]
    return [Section("estimators-vs-exact", "Estimators against the exact values", 2, body)]


def trials_done(tables: Tables, expected: int | None = None) -> tuple[int, int]:
    """(trials complete, trials in all): in all, those found, or `expected` (a sweep's grid,
    whose trials not yet started have written nothing) when more."""
    progress = tables.progress
    complete = progress.filter(pl.col("status") == "complete").height
    return complete, max(progress.height, expected or 0)


def header(tables: Tables, paths: list, seconds: str, watch: int | None = None, trials: int | None = None) -> str:
    """What was run, at a glance: sweeps, groups, repetitions, epochs, completeness. `trials`:
    how many trials the sweep has in all, where known (a sweep's own live report)."""
    progress = tables.progress
    complete, total = trials_done(tables, trials)
    gaps = tables.completeness.filter(pl.col("incomplete_epochs") > 0).height
    partial = complete < total
    repetitions = tables.completeness.get_column("repetitions")
    epochs = tables.mi_stats.group_by(PLANE).agg(pl.col("global_epoch").max()).get_column("global_epoch")
    span = lambda values: f"{values.min()}" if values.min() == values.max() else f"{values.min()} to {values.max()}"  # noqa: E731
    prefit = tables.mi_stats.filter(pl.col("phase") == "prefit").height > 0
    started = f" ({progress.height} started)" if total > progress.height else ""
    facts = {
        "sweeps": ", ".join(sorted(set(progress.get_column("sweep").drop_nulls().to_list()))) or "–",
        "groups": f"{tables.completeness.height} ({tables.mi_stats.select(NETWORK).unique().height} network(s))",
        "repetitions": f"{span(repetitions)} per group, {progress.get_column('seeds_written').sum()} in all",
        "epochs": f"{span(epochs)}{' (prefit, then train)' if prefit else ''}",
        "trials": f"{complete} of {total} complete{started}",
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


def page_sections(tables: Tables, results: Results) -> list[Section]:
    """Every section of the page, in order, those with nothing to show left out, their anchors
    and chart ids made unique: charts first (the planes leading; the estimators against exact
    with their table), then the tables, and the sweep files, folded, last."""
    *summary, sweep_files = summary_sections(tables, results)
    ordered = (
        plane_sections(tables)
        + [accuracy_section(tables)]
        + comparison_sections(tables)
        + referee_sections(tables)
        + summary
        + [sweep_files]
    )
    shown = [section for section in ordered if section.body]
    unique_slugs(shown)
    return shown
