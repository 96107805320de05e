"""Screenshots of a report at 1280 and 1920 px wide, for a person to look at (not committed).

Opens the report in Debian's headless Chromium (selenium, as the report's browser test),
waits until every chart has rendered, and writes <out>/report-<width>.png: the first
screen (`--fold`, the window's height) and the whole page (`-full`). Without a report it
builds one from synthetic results, two sweeps that differ in the activation only (tanh and
ReLU, as the paper's figures), and prints the build time and size:

    python benchmarks/report_screenshots.py [REPORT.html] [--out results/screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from analysis_fixtures import write_sweep  # noqa: E402

from analysis import report  # noqa: E402

WIDTHS = (1280, 1920)  # px
FOLD = {1280: 800, 1920: 1080}  # px: the window's height, the first screen


def example_report(folder: Path) -> Path:
    root = folder / "results"
    for activation in ("tanh", "relu"):
        write_sweep(root, f"syn-{activation}", 2, 5, 1000, layers=7, prefit_epochs=0, activation=activation)
    started = time.perf_counter()
    out = report.build_report([root], folder / "report.html")
    print(f"built {out}: {time.perf_counter() - started:.1f} s, {out.stat().st_size / 1e6:.2f} MB")
    return out


def screenshots(page: Path, out: Path) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-background-networking"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="ibray-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for width in WIDTHS:
            driver.set_window_size(width, FOLD[width])
            driver.get(page.resolve().as_uri())
            WebDriverWait(driver, 120).until(
                lambda d: d.execute_script(
                    "return Array.from(document.querySelectorAll('div.chart')).every(d => d.hasAttribute('data-rendered'))"
                )
            )
            time.sleep(0.5)
            # window size is the outer size: make the viewport itself `width` px wide
            inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
            driver.set_window_size(2 * width - inner[0], 2 * FOLD[width] - inner[1])
            time.sleep(0.5)
            fold = out / f"report-{width}-fold.png"
            driver.save_screenshot(str(fold))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(2 * width - inner[0], height + 2 * FOLD[width] - inner[1])
            time.sleep(1.0)
            full = out / f"report-{width}-full.png"
            driver.save_screenshot(str(full))
            written += [fold, full]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, help="a report to photograph (default: build an example)")
    parser.add_argument("--out", type=Path, default=Path("results/screenshots"), help="folder for the PNG files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        page = args.report or example_report(Path(scratch))
        for path in screenshots(page, args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
