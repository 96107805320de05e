"""Tests of analysis.report: the HTML file, escaping, bad input, PNGs, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl
import pytest
from analysis_fixtures import curves, write_sweep, write_trial

from analysis import report

XSS = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report over two sweeps: one with prefit and binning, one 4-bit named like an attack."""
    root = tmp_path_factory.mktemp("results")
    write_sweep(root, "main", 2, 2, 120, layers=3, estimators=("exact", "bin30"), prefit_epochs=20, parts=2)
    write_sweep(root, XSS, 1, 2, 120, layers=3, bits=4, yaml_text=f"name: '{XSS}'\n", folder_name="xss")
    # a partly written trial: still running, fewer epochs
    mi, metrics = curves([9], epochs=30, layers=3, sweep="main", trial="trial-running")
    write_trial(
        root / "main" / "trials" / "trial-running", mi, metrics, {"seeds": [9], "epochs": 120}, status="running"
    )
    out = report.build_report([root], root / "out" / "report.html")
    return root, out, out.read_text(encoding="utf-8")


def chart_ids(page: str) -> list[str]:
    return re.findall(r'<div class="chart" id="([^"]+)"', page)


def test_report_is_one_self_contained_file(built):
    _, out, page = built
    assert page.count("window.vegaEmbed=") == 1  # the libraries inlined once
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert "default-src 'none'" in page  # the page may fetch nothing
    ids = chart_ids(page)
    # 3 groups (exact 8-bit, bin30 8-bit, exact 4-bit), each: a plane over its I(X;T) and I(T;Y)
    # curves, the median-deviating repetition and the spread; 2 accuracy charts; comparisons
    # (estimators, bits); exact and bin30 overlaid, and bin30's two gaps to exact
    assert len(ids) == 3 * 5 + 2 + 2 + 3 and len(set(ids)) == len(ids)
    anchors = (
        "planes",
        "variance",
        "accuracy-curves",
        "cmp-estimators",
        "cmp-bits",
        "estimators-vs-exact",
        "trials",
        "completeness",
        "accuracy",
        "phases",
        "sweeps",
    )
    for anchor in anchors:
        assert f'href="#{anchor}"' in page and f'id="{anchor}"' in page
    # charts first (the planes leading), then the tables, the sweep files last
    assert [page.index(f'<h2 id="{a}"') for a in anchors] == sorted(page.index(f'<h2 id="{a}"') for a in anchors)
    assert out.stat().st_size < 5_000_000


def page_data(page: str) -> tuple[dict, dict]:
    """The page's data store and each chart's spec, by chart id."""
    store = json.loads(re.search(r'<script type="application/json" id="ibray-data">(.*?)</script>', page).group(1))
    specs = {
        chart: json.loads(
            re.search(rf'<script type="application/json" id="spec-{chart}">(.*?)</script>', page).group(1)
        )
        for chart in chart_ids(page)
    }
    return store, specs


def test_header_says_what_was_run(built):
    _, _, page = built
    header = page[page.index("<header>") : page.index("</header>")]
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", header))
    assert facts["groups"] == "3 (2 network(s))"
    assert facts["repetitions"] == "2 to 5 per group, 7 in all"  # 4 + 1 running in main, 2 in the other sweep
    assert facts["trials"] == "3 of 4 complete"
    assert facts["completeness"] == "1 group(s) lack repetitions at some epochs"
    assert facts["epochs"] == "120 to 140 (prefit, then train)"
    assert '<span class="badge partial">partial</span>' in header
    assert 'id="group-picker"' not in header  # two rows of planes: no picker needed


def test_groups_that_differ_in_one_axis_share_a_row_and_its_scales(built):
    _, _, page = built
    store, specs = page_data(page)
    rows = re.findall(
        r'<div class="set" data-set="([^"]+)">(.*?)</div></div></div>(?=<div class="set"|<h2)',
        page[: page.index('id="variance"')],
    )
    planes = [[c for c in chart_ids(body) if c.endswith("-mean")] for _, body in rows]
    # exact: the 8-bit and 4-bit networks (they differ in bits only) side by side, 8-bit... sorted up
    assert planes == [
        ["plane-synthetic12-syn-tanh-4-exact-mean", "plane-synthetic12-syn-tanh-8-exact-mean"],
        ["plane-synthetic12-syn-tanh-8-bin30-mean"],
    ]
    four, eight = (specs[c] for c in planes[0])
    assert four["layer"][0]["encoding"]["x"]["scale"]["domain"] == eight["layer"][0]["encoding"]["x"]["scale"]["domain"]
    largest = max(
        max(
            row[store[specs[c]["data"]["name"]]["fields"].index("mi_xt_mean")]
            for row in store[specs[c]["data"]["name"]]["rows"]
        )
        for c in planes[0]
    )
    assert four["layer"][0]["encoding"]["x"]["scale"]["domain"] == [0, round(1.03 * largest, 4)]
    # the plane and its curves read one data set, stored once
    group = "plane-synthetic12-syn-tanh-8-exact"
    names = {specs[f"{group}-{kind}"]["data"]["name"] for kind in ("mean", "mi_xt", "mi_ty", "spread")}
    assert len(names) == 1 and page.count(f'"{names.pop()}":{{"fields"') == 1
    assert all("values" not in spec.get("data", {}) for spec in specs.values())


def test_sweep_files_are_folded(built):
    _, _, page = built
    sweeps = page[page.index('<h2 id="sweeps"') :]
    assert sweeps.count("<details><summary>") == 2 and sweeps.count("<pre>") == 2
    assert "<pre>" not in page[page.index("<header>") : page.index('<h2 id="sweeps"')]


def test_names_and_sweep_files_are_escaped(built):
    _, _, page = built
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # trials table, sweep file, paths
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in page  # inside chart specs


def test_summary_tables(built):
    _, _, page = built
    assert "Final accuracies" in page and "± " in page
    assert "1 trial(s) incomplete" in page and "main/trial-running (running)" in page
    assert "DPI violations" in page
    # The running trial's seed 9 (train epochs 0-30, i.e. 20-50 of the group's 141) joins the
    # four repetitions of `main`: only epochs 21-50 have all five; at 20 it is alone.
    assert "111 of 141 epochs (0 to 140) lack repetitions: as few as 1 of 5" in page
    assert "all 4 repetitions at every epoch" in page  # the bin30 group: no running trial
    assert "name: &#x27;&lt;script&gt;" in page  # the sweep file, verbatim and escaped


def test_main_writes_report_and_pngs(built, tmp_path, capsys):
    root, _, _ = built
    out = tmp_path / "r.html"
    args = [str(root / "xss"), "-o", str(out), "--png", str(tmp_path / "png"), "--svg", str(tmp_path / "svg")]
    assert report.main(args) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == len(chart_ids(out.read_text())) == 6  # plane, 2 curves, median, spread, accuracy
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    svgs = sorted(p.name for p in (tmp_path / "svg").glob("*.svg"))
    assert svgs == ["plane-synthetic12-syn-tanh-4-exact-mean.svg", "plane-synthetic12-syn-tanh-4-exact-median.svg"]
    plane = (tmp_path / "svg" / svgs[0]).read_text()
    assert plane.startswith("<svg") and 'class="mark-symbol' in plane
    width = float(re.search(r'<svg[^>]* width="([0-9.]+)"', plane).group(1))
    assert report.PRINT_SIZE[0] < width < report.PRINT_SIZE[0] + 300  # print size: plot area plus axes and legends
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "other parquet", "truncated", "missing"])
def test_main_bad_input_exits_nonzero_with_one_message(tmp_path, capsys, case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = tmp_path / "in"
    target.mkdir()
    if case == "other parquet":
        pq.write_table(pa.table({"x": [1]}), target / "x.parquet")
    elif case == "truncated":
        folder = write_trial(target / "t", *curves([0], epochs=3, layers=2))
        part = folder / "metrics" / "part-00000.parquet"
        part.write_bytes(part.read_bytes()[:100])
    elif case == "missing":
        target = tmp_path / "nothing-here"
    assert report.main([str(target), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ibray report: error: ") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="ibray-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options), profile


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (.ci/run installs Debian's chromium)")
def test_every_chart_renders_in_headless_chromium(built):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.support.ui import WebDriverWait

    _, out, page = built
    expected = chart_ids(page)
    driver, profile = browser()
    try:
        driver.get(out.resolve().as_uri())
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('div.chart')).every(d => d.hasAttribute('data-rendered'))"
            )
        )
        states = driver.execute_script(
            "return Array.from(document.querySelectorAll('div.chart')).map("
            "d => [d.id, d.getAttribute('data-rendered'), d.querySelectorAll('svg, canvas').length])"
        )
        assert [s[0] for s in states] == expected
        assert all(rendered == "true" and drawn >= 1 for _, rendered, drawn in states), states
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # the sweep named <script>alert(1)</script> stayed text
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        side_by_side_hover_and_legend(driver, page)
        brushing_the_curves_steers_the_plane(driver, page)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def side_by_side_hover_and_legend(driver, page: str) -> None:
    """At 1600 px the 4-bit and 8-bit planes share a row; a point's tooltip shows its values;
    clicking layer 2 in the legend dims every other layer's points."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.set_window_size(1600, 1000)
    driver.execute_script("window.dispatchEvent(new Event('resize'))")
    inner = driver.execute_script("return window.innerWidth")
    driver.set_window_size(1600 + (1600 - inner), 1000)
    driver.execute_script("window.dispatchEvent(new Event('resize'))")
    four = driver.find_element(By.ID, "plane-synthetic12-syn-tanh-4-exact-mean")
    eight = driver.find_element(By.ID, "plane-synthetic12-syn-tanh-8-exact-mean")
    left, right = four.rect, eight.rect
    assert abs(left["y"] - right["y"]) < 1 and left["x"] + left["width"] <= right["x"]
    assert left["width"] > 600 and right["width"] > 600  # large: about half the page each
    # hover a point: its tooltip holds the values of its row in the page's data
    store, specs = page_data(page)
    table = store[specs[eight.get_attribute("id")]["data"]["name"]]
    points = eight.find_elements(By.CSS_SELECTOR, "g.mark-symbol.role-mark path")
    assert len(points) == len(table["rows"])
    ActionChains(driver).move_to_element(points[len(points) // 2]).perform()
    tooltip = driver.execute_script(
        "var t = document.getElementById('vg-tooltip-element');"
        "return t && t.classList.contains('visible') ? Array.from(t.querySelectorAll('tr')).map(r => [r.cells[0].innerText, r.cells[1].innerText]) : null"
    )
    assert tooltip, "no tooltip after hovering a point"
    shown = dict(tooltip)
    column = {f: i for i, f in enumerate(table["fields"])}
    row = next(
        r
        for r in table["rows"]
        if r[column["layer"]] == int(shown["layer"])
        and r[column["epoch"]] == int(shown["epoch"])
        and r[column["phase"]] == shown["phase"]
    )
    assert (
        shown["I(X;T)"] == f"{row[column['mi_xt_mean']]:.3f}" and shown["I(T;Y)"] == f"{row[column['mi_ty_mean']]:.3f}"
    )
    assert int(shown["repetitions"]) == row[column["n"]]

    def opacities() -> dict[int, set[float]]:
        found: dict[int, set[float]] = {}
        for label, opacity in driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('g.mark-symbol.role-mark path')).map("
            "p => [p.getAttribute('aria-label'), p.getAttribute('opacity')])",
            eight,
        ):
            layer = int(re.search(r"layer: (\d+)", label).group(1))
            found.setdefault(layer, set()).add(float(opacity))
        return found

    assert opacities() == {1: {0.9}, 2: {0.9}, 3: {0.9}}
    label = next(t for t in eight.find_elements(By.CSS_SELECTOR, "g.role-legend-label text") if t.text == "2")
    ActionChains(driver).move_to_element(label).click().perform()
    assert driver.execute_script("return ibrayViews[arguments[0]].signal('layer_pick')", eight.get_attribute("id"))[
        "layer"
    ] == [2]
    assert opacities() == {1: {0.08}, 2: {0.9}, 3: {0.08}}


def brushing_the_curves_steers_the_plane(driver, page: str) -> None:
    """Dragging over a card's I(X;T) curves draws only the plane's points in the epochs picked,
    the same card's plane only; a double-click on the curves draws them all again."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store, specs = page_data(page)
    plane = driver.find_element(By.ID, "plane-synthetic12-syn-tanh-4-exact-mean")
    other = driver.find_element(By.ID, "plane-synthetic12-syn-tanh-8-exact-mean")
    curves = driver.find_element(By.ID, "plane-synthetic12-syn-tanh-4-exact-mi_xt")
    table = store[specs[plane.get_attribute("id")]["data"]["name"]]
    epochs = [row[table["fields"].index("global_epoch")] for row in table["rows"]]

    def points(chart) -> int:
        return len(chart.find_elements(By.CSS_SELECTOR, "g.mark-symbol.role-mark path"))

    everything, elsewhere = points(plane), points(other)
    assert everything == len(epochs)
    driver.execute_script("arguments[0].scrollIntoView()", curves)
    frame = curves.find_element(By.CSS_SELECTOR, "g.role-frame path")
    width = frame.rect["width"]
    ActionChains(driver).move_to_element_with_offset(frame, -int(width * 0.3), 0).click_and_hold().move_by_offset(
        int(width * 0.25), 0
    ).release().perform()
    low, high = driver.execute_script("return ibrayViews[arguments[0]].signal('epochs')", curves.get_attribute("id"))[
        "global_epoch"
    ]
    assert 0 < low < high < max(epochs)
    inside = sum(low <= epoch <= high for epoch in epochs)
    assert 0 < inside < everything
    WebDriverWait(driver, 10).until(lambda d: points(plane) == inside)
    assert points(other) == elsewhere  # another card's plane is left alone
    ActionChains(driver).double_click(frame).perform()
    WebDriverWait(driver, 10).until(lambda d: points(plane) == everything)


def test_phases_leave_out_epochs_where_repetitions_are_missing(built):
    from analysis.load import load

    root, _, _ = built
    tables = report.compute(load([root / "main"]))
    train = tables.phases.filter(pl.col("phase") == "train")
    last = dict(train.group_by("estimator").agg(pl.col("last_epoch").max()).rows())
    assert last == {"exact": 30, "bin30": 120}  # exact: seed 9 stops at 30; bin30 has no seed 9


def small_sweep(tmp_path) -> Path:
    return write_sweep(tmp_path / "results", "small", 1, 2, 20, layers=2)


def test_outputs_inside_the_results_read_are_refused(tmp_path, capsys):
    folder = small_sweep(tmp_path)
    part = sorted(folder.glob("trials/*/mi/*.parquet"))[0]
    record = sorted(folder.glob("trials/*/trial.json"))[0]
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    for args in (
        ["-o", str(part)],  # a Parquet part
        ["-o", str(record)],  # the trial record
        ["-o", str(folder / "sweep.yaml")],
        ["-o", str(folder / "trials" / "new.html")],  # a new name among them
        ["-o", str(tmp_path / "fine.html"), "--png", str(folder / "charts")],
        ["-o", str(tmp_path / "fine.html"), "--svg", str(folder / "figures")],
        ["-o", str(tmp_path / "results" / ".." / "results" / "small" / "r.html")],  # the same place, spelled otherwise
    ):
        assert report.main([str(folder), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ibray report: error: ") and err.count("\n") == 1 and "inside the results" in err
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert after == before  # nothing replaced, nothing added
    assert not (tmp_path / "fine.html").exists()
    # a trial folder given as input guards itself too; a report beside the results is fine
    trial = record.parent
    assert report.main([str(trial), "-o", str(trial / "r.html")]) == 2
    assert report.main([str(folder), "-o", str(tmp_path / "beside.html")]) == 0


def test_a_report_that_cannot_be_written_leaves_the_old_one(tmp_path, capsys):
    import subprocess

    folder = small_sweep(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    # a real full disk: a 256 KiB tmpfs, far smaller than a report (about 1 MB of inlined JavaScript)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {mounted.stderr.decode().strip()}")
    try:
        old = full / "report.html"
        old.write_bytes(b"<html>the old report</html>")
        assert report.main([str(folder), "-o", str(old)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "report.html" in err and "No space left" in err
        assert old.read_bytes() == b"<html>the old report</html>"
        assert sorted(p.name for p in full.iterdir()) == ["report.html"]  # no temporary file left
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_a_seed_written_by_two_sweeps_is_said_to_count_twice(tmp_path):
    root = tmp_path / "results"
    write_sweep(root, "first", 1, 2, 20, layers=2)
    write_sweep(root, "again", 1, 2, 20, layers=2)  # the same network and seeds 0 and 1
    write_sweep(root, "other", 1, 2, 20, layers=2, bits=4)  # another network: its seeds are its own
    page = report.build_report([root], tmp_path / "r.html").read_text(encoding="utf-8")
    warning = re.search(r'<p class="warn">(2 seed\(s\) were written by more than one sweep or trial[^<]*)</p>', page)
    assert warning, "no warning about the repeated seeds"
    text = warning.group(1)
    assert "seed 0 of " in text and "seed 1 of " in text and "in 2 places (again/" in text and "first/" in text
    assert "other/" not in text
    lone = report.build_report([root / "first"], tmp_path / "lone.html").read_text(encoding="utf-8")
    assert "written by more than one sweep" not in lone


def test_estimators_against_exact_appear_only_beside_other_estimators(built, tmp_path):
    _, _, page = built  # `main` ran exact beside bin30
    section = page[page.index('id="estimators-vs-exact"') :]
    section = section[: section.index("</table>")]
    assert 'href="#estimators-vs-exact"' in page and "Estimators against the exact values" in section
    assert section.count("<tr>") == 2 and "<td>bin30</td>" in section  # the header and bin30's row
    assert "<td>1,2,3 / 1,2,3</td>" in section  # exact and bin30 both fit and compress at every layer
    exact_only = report.build_report([small_sweep(tmp_path)], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "estimators-vs-exact" not in exact_only and "Estimators against the exact values" not in exact_only


def watched(tmp_path, epochs: int) -> tuple[Path, Path, object]:
    """`ibray report --watch 1` over a sweep whose one trial is running, once it wrote a report."""
    import subprocess
    import sys
    import time

    root = tmp_path / "results"
    mi, metrics = curves([0, 1], epochs=epochs, layers=2, sweep="live", trial="t0")
    folder = write_trial(
        root / "live" / "trials" / "t0", mi, metrics, {"seeds": [0, 1], "epochs": 30}, status="running"
    )
    out = tmp_path / "live.html"
    command = [sys.executable, "-m", "analysis.report", str(root), "-o", str(out), "--watch", "1"]
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not out.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out.exists(), process.communicate(timeout=5) if process.poll() is not None else "no report within 120 s"
    return folder, out, process


def facts_of(page: str) -> dict[str, str]:
    header = page[page.index("<header>") : page.index("</header>")]
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", header)) | {
        "badge": re.search(r'class="badge (\w+)"', header).group(1)
    }


def test_watch_rewrites_the_report_until_every_trial_is_complete(tmp_path):
    folder, out, process = watched(tmp_path, epochs=10)
    try:
        page = out.read_text(encoding="utf-8")
        assert facts_of(page).items() >= {"badge": "partial", "trials": "0 of 1 complete", "epochs": "10"}.items()
        assert '<meta http-equiv="refresh" content="1">' in page and "Rewritten every 1 s" in page
        mi, metrics = curves([0, 1], epochs=30, layers=2, sweep="live", trial="t0")
        write_trial(
            folder, mi, metrics, {"seeds": [0, 1], "epochs": 30}, status="complete"
        )  # the trial goes on and ends
        assert process.wait(timeout=120) == 0
    finally:
        process.kill() if process.poll() is None else None
    stdout = process.stdout.read()
    assert "(partial," in stdout and "(complete," in stdout
    page = out.read_text(encoding="utf-8")
    assert facts_of(page).items() >= {"badge": "complete", "trials": "1 of 1 complete", "epochs": "30"}.items()
    assert 'http-equiv="refresh"' not in page and "Rewritten every" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.html", "results"]  # no temporary file left


def test_watch_stops_on_ctrl_c_with_130_and_leaves_the_last_report(tmp_path):
    import signal

    _, out, process = watched(tmp_path, epochs=10)
    before = out.read_bytes()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in process.stderr.read()
    after = out.read_bytes()
    assert after.endswith(b"</html>\n") and facts_of(after.decode())["badge"] == "partial"
    assert len(after) > 0.9 * len(before)


@pytest.fixture(scope="module")
def estimators(tmp_path_factory):
    """A sweep whose network ran exact, knn, kde and edge (any estimator name), with gaps known
    by construction: knn = exact + 0.5 + 0.2 seed in I(X;T) and exact - 0.1 in I(T;Y); kde =
    exact - 0.25 layer in I(X;T); edge = exact. Returns the raw rows and the page."""
    from ibray.records import MI_SCHEMA

    root = tmp_path_factory.mktemp("estimators")
    mi, metrics = curves([0, 1], epochs=20, layers=3, sweep="est", trial="t0")
    exact = pl.from_arrow(mi)
    rows = pl.concat(
        [
            exact,
            exact.with_columns(
                pl.lit("knn").alias("estimator"),
                pl.col("mi_xt") + 0.5 + 0.2 * pl.col("seed"),
                pl.col("mi_ty") - 0.1,
            ),
            exact.with_columns(pl.lit("kde").alias("estimator"), pl.col("mi_xt") - 0.25 * pl.col("layer")),
            exact.with_columns(pl.lit("edge").alias("estimator")),
        ]
    )
    write_trial(
        root / "est" / "trials" / "t0",
        rows.to_arrow().cast(MI_SCHEMA),
        metrics,
        {"seeds": [0, 1], "epochs": 20, "estimators": ["exact", "knn", "kde", "edge"]},
    )
    out = report.build_report([root], tmp_path_factory.mktemp("estimators-report") / "r.html")
    return rows, out.read_text(encoding="utf-8")


def test_each_estimator_is_drawn_over_exact_with_its_gap_per_layer(estimators):
    rows, page = estimators
    store, specs = page_data(page)
    section = page[page.index('<h2 id="estimators-vs-exact"') :]
    section = section[: section.index("<h2", 5)]
    ids = chart_ids(section)
    gaps = [f"estimators-synthetic12-syn-tanh-8-{e}-gap-{q}" for e in ("edge", "kde", "knn") for q in ("xt", "ty")]
    assert ids == ["estimators-synthetic12-syn-tanh-8-plane", *gaps]  # exact first, the others sorted
    assert section.index("<table>") > section.index(ids[-1])  # the referee table under the charts

    # the plane: every estimator overlaid, coloured by estimator (exact near-black), shaped by layer
    plane = specs["estimators-synthetic12-syn-tanh-8-plane"]
    table = store[plane["data"]["name"]]
    column = {f: i for i, f in enumerate(table["fields"])}
    assert {r[column["estimator"]] for r in table["rows"]} == {"exact", "edge", "kde", "knn"}
    assert {(r[column["estimator"]], r[column["layer"]]) for r in table["rows"]} == {
        (e, layer) for e in ("exact", "edge", "kde", "knn") for layer in (1, 2, 3)
    }
    lines, points = plane["layer"]
    assert lines["encoding"]["color"]["field"] == "estimator" and lines["encoding"]["detail"]["field"] == "layer"
    assert lines["encoding"]["color"]["scale"]["domain"] == ["exact", "edge", "kde", "knn"]
    assert lines["encoding"]["color"]["scale"]["range"][0] == "#222222"
    assert points["encoding"]["shape"]["field"] == "layer"

    # a gap row checked by hand, and against the rows written: knn at layer 2, train epoch 10
    def gap_row(estimator: str, quantity: str, layer: int, epoch: int) -> dict:
        data = store[specs[f"estimators-synthetic12-syn-tanh-8-{estimator}-gap-{quantity}"]["data"]["name"]]
        found = [dict(zip(data["fields"], r)) for r in data["rows"]]
        return next(r for r in found if r["layer"] == layer and r["epoch"] == epoch and r["phase"] == "train")

    def written(estimator: str, value: str, layer: int, epoch: int) -> float:
        picked = rows.filter(pl.col("estimator") == estimator, pl.col("layer") == layer, pl.col("epoch") == epoch)
        assert picked.height == 2  # both seeds
        return picked.get_column(value).mean()

    knn_xt, knn_ty = gap_row("knn", "xt", 2, 10), gap_row("knn", "ty", 2, 10)
    assert knn_xt["gap_xt"] == pytest.approx(0.6, abs=1e-5)  # 0.5 + 0.2 * mean(seed 0, seed 1)
    assert knn_ty["gap_ty"] == pytest.approx(-0.1, abs=1e-5)
    assert knn_xt["exact_xt"] == pytest.approx(written("exact", "mi_xt", 2, 10), abs=1e-5)
    assert knn_xt["estimate_xt"] == pytest.approx(written("knn", "mi_xt", 2, 10), abs=1e-5)
    assert knn_xt["gap_xt"] == pytest.approx(knn_xt["estimate_xt"] - knn_xt["exact_xt"], abs=2e-5)
    assert knn_xt["points"] == 2
    assert gap_row("kde", "xt", 3, 10)["gap_xt"] == pytest.approx(-0.75, abs=1e-5)
    assert gap_row("kde", "ty", 3, 10)["gap_ty"] == pytest.approx(0.0, abs=1e-5)
    assert gap_row("edge", "xt", 1, 20)["gap_xt"] == pytest.approx(0.0, abs=1e-5)
    # the gap axes are shared by the estimators of the row, 0 and every gap inside them
    for quantity, (low, high) in (("xt", (-0.75, 0.6)), ("ty", (-0.1, 0.0))):
        domains = {
            tuple(
                specs[f"estimators-synthetic12-syn-tanh-8-{e}-gap-{quantity}"]["layer"][0]["encoding"]["y"]["scale"][
                    "domain"
                ]
            )
            for e in ("edge", "kde", "knn")
        }
        assert len(domains) == 1
        (domain,) = domains
        assert domain[0] <= low <= 0 <= high <= domain[1]
