"""The HTML report and the `ibray report` command: one self-contained file over one or more
results folders.

This module owns the command and the one step that writes the report: load the results, run
every aggregation once (tables.py), lay out the page's sections (sections.py), render them
(page.py) and write the file atomically (output.py), with each chart as PNG or SVG if asked.
`--watch` rewrites it while trials run. Output paths are checked once, before anything is
built (output.check_report_outputs).

The names other code imports from here (compute, Tables, build_report, javascript_bundle,
bits_label, network_label, slugify, PRINT_SIZE, OutputError, write_atomically) stay importable
from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.load import ResultsError, load
from analysis.output import OutputError, check_report_outputs, write_atomically
from analysis.page import PRINT_SIZE, javascript_bundle, render, slugify, write_figures
from analysis.sections import bits_label, header, network_label, page_sections, trials_done
from analysis.tables import Tables, compute

__all__ = [
    "Built",
    "OutputError",
    "PRINT_SIZE",
    "Tables",
    "bits_label",
    "build",
    "build_report",
    "compute",
    "javascript_bundle",
    "main",
    "network_label",
    "slugify",
    "watch_report",
    "write_atomically",
]


@dataclass
class Built:
    """A report written: where, and how complete its results were."""

    path: Path
    trials_complete: int
    trials: int  # in all: those found, or the sweep's grid when given and more

    @property
    def complete(self) -> bool:
        return self.trials_complete == self.trials

    def state(self) -> str:
        """'complete' or 'partial', with the trials and the file's size."""
        kind = "complete" if self.complete else "partial"
        size = self.path.stat().st_size / 1e6
        return f"{kind}, {self.trials_complete} of {self.trials} trials complete, {size:.1f} MB"


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
    return build(paths, out, png_dir, svg_dir, watch).path


def build(paths, out, png_dir=None, svg_dir=None, watch=None, trials: int | None = None) -> Built:
    """build_report, saying how complete the results were. `trials`: the trials there are in
    all, where known (a sweep's grid: its trials not yet started have written nothing); the
    report is partial until that many are complete."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    started = time.time()
    results = load(paths)
    tables = compute(results)
    if tables.mi_stats.height == 0:
        raise ResultsError(f"{', '.join(map(str, paths))}: the MI tables hold no rows; nothing to report")
    sections = page_sections(tables, results)
    done, total = trials_done(tables, trials)
    refresh = None if done == total else watch
    page = render(sections, "ibray report", header(tables, paths, "{seconds}", watch, trials), refresh)
    page = page.replace("{seconds}", f"{time.time() - started:.1f}", 1)
    out = Path(out)
    write_atomically(out, page.encode("utf-8"))
    figures = [figure for section in sections for figure in section.figures()]
    if png_dir is not None:
        write_figures(figures, Path(png_dir), "png")
    if svg_dir is not None:
        write_figures([f for f in figures if f.role in ("plane", "median")], Path(svg_dir), "svg")
    return Built(out, done, total)


def watch_report(
    paths: list[str], out: str, seconds: int, png_dir: str | None = None, svg_dir: str | None = None
) -> Path:
    """Rewrite the report every `seconds` from what has been written until every trial is
    complete (then once more, final), or until Ctrl-C (KeyboardInterrupt reaches the caller).
    An error after the first report is said on stderr and the earlier report stays."""
    first = True
    while True:
        try:
            built = build(paths, out, png_dir, svg_dir, seconds)
        except ResultsError as error:
            if first:
                raise
            print(f"ibray report: not rewritten this time: {error}", file=sys.stderr, flush=True)
        else:
            print(f"{time.strftime('%H:%M:%S')} wrote {built.path} ({built.state()})", flush=True)
            if built.complete:
                return built.path
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
        check_report_outputs(args.output, args.png, args.results, args.svg)
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


if __name__ == "__main__":
    sys.exit(main())
