"""The report's HTML: the page's parts (Section, Grid, Card, Figure), their text and tables,
and the one self-contained file they become; the charts as PNG and SVG files.

This module owns the page's machinery, not what it shows (sections.py): escaping, the CSS, the
script that draws the charts, and `render`, which writes one HTML document with Vega,
Vega-Lite and vega-embed inlined once (from vl-convert), each chart's spec embedded as JSON
and its data in one store (each data set once, shared by the charts that draw it), rendered by
vegaEmbed, so the page opens offline; a Content-Security-Policy forbids any network request.

Everything from the results goes through here escaped: text in HTML through html.escape, JSON
in <script> blocks with <, > and & as \\u escapes.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import polars as pl

from analysis import charts
from analysis.output import write_atomically

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


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def slugify(*parts: object) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-") or "x"


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
