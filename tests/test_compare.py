"""Tests of analysis.compare and `ibray compare`: the referee table against values recomputed by
hand from the Parquet rows of a real trial, phases on made-up curves, and bad input."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from analysis_fixtures import curves, table, write_trial

from analysis.compare import compare
from ibray.cli import main

POINT = ["seed", "phase", "epoch", "layer"]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A real trial: 2 seeds, MI at epochs 0, 2, 4, exact beside bin1000 (per-layer bounds) and kde."""
    out = tmp_path_factory.mktemp("compare") / "trial"
    args = [
        "trial",
        "--dataset",
        "synthetic12",
        "--architecture",
        "8-4-2",
        "--estimators",
        "exact,bin1000,kde",
        "--bin-bounds",
        "layer",
        "--epochs",
        "4",
        "--mi-every",
        "2",
        "--seeds",
        "0-1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


def beside_exact(mi: pl.DataFrame, estimator: str) -> pl.DataFrame:
    """An estimator's rows joined to the exact rows of the same point, by hand."""
    exact = mi.filter(pl.col("estimator") == "exact").select(*POINT, xt="mi_xt", ty="mi_ty")
    return mi.filter(pl.col("estimator") == estimator).join(exact, on=POINT)


def test_errors_are_those_of_the_rows_recomputed_by_hand(trial):
    table = compare([trial])
    assert table.get_column("estimator").to_list() == ["bin1000", "kde"]
    mi = pl.read_parquet(trial / "mi" / "*.parquet")
    kde = beside_exact(mi, "kde")
    row = table.filter(pl.col("estimator") == "kde").row(0, named=True)
    assert row["points"] == kde.height == 2 * 3 * 4  # seeds x epochs x layers (softmax included)
    error_xt, error_ty = (kde["mi_xt"] - kde["xt"]).abs(), (kde["mi_ty"] - kde["ty"]).abs()
    assert row["mi_xt_error_mean"] == pytest.approx(error_xt.mean(), abs=1e-12)
    assert row["mi_xt_error_worst"] == pytest.approx(error_xt.max(), abs=1e-12)
    assert row["mi_ty_error_mean"] == pytest.approx(error_ty.mean(), abs=1e-12)
    assert row["mi_ty_error_worst"] == pytest.approx(error_ty.max(), abs=1e-12)
    assert row["mi_xt_error_worst"] > 0.1  # KDE's smoothing does lose information here
    # 1000 bins over each layer's own range are finer than its 255 quantization steps: each
    # state its own bin, so binning counts exactly what exact counts
    binned = table.filter(pl.col("estimator") == "bin1000").row(0, named=True)
    assert binned["mi_xt_error_worst"] < 1e-9 and binned["mi_ty_error_worst"] < 1e-9
    assert binned["same_phases"] and binned["dpi_violations"] == "0 / 18"
    assert row["dataset"] == "synthetic12" and row["architecture"] == "8-4-2" and row["bits"] == 8


def test_dpi_violations_are_counted_as_by_hand(trial):
    mi = pl.read_parquet(trial / "mi" / "*.parquet").filter(pl.col("estimator") == "kde").sort(POINT)
    previous = (
        pl.col("mi_xt").shift(1).over("seed", "phase", "epoch"),
        pl.col("mi_ty").shift(1).over("seed", "phase", "epoch"),
    )
    marked = mi.with_columns(
        ((pl.col("mi_xt") > previous[0] + 1e-9) | (pl.col("mi_ty") > previous[1] + 1e-9)).alias("violation")
    ).filter(pl.col("layer") > 1)
    expected = f"{marked['violation'].sum()} / {marked.height}"
    assert compare([trial]).filter(pl.col("estimator") == "kde")["dpi_violations"].item() == expected


def test_an_estimator_that_misses_the_phases_is_told_apart(tmp_path):
    """Made-up curves where exact fits and compresses at both layers; a flat estimator does not."""
    mi, metrics = curves([0, 1], epochs=60, layers=2)
    exact = pl.from_arrow(mi)
    flat = table(
        "mi",
        seed=exact["seed"].to_numpy(),
        epoch=exact["epoch"].to_numpy(),
        layer=exact["layer"].to_numpy(),
        estimator="flat",
        mi_xt=np.full(exact.height, 3.0),
        mi_ty=np.full(exact.height, 0.5),
        sweep="s",
        trial="t0",
    )
    write_trial(tmp_path / "t0", pa.concat_tables([mi, flat]), metrics)
    row = compare([tmp_path]).row(0, named=True)
    assert row["estimator"] == "flat" and row["points"] == exact.height
    assert (row["fitting_exact"], row["compression_exact"]) == ("1,2", "1,2")
    assert (row["fitting"], row["compression"], row["same_phases"]) == ("", "", False)
    assert row["mi_xt_error_mean"] == pytest.approx((exact["mi_xt"] - 3.0).abs().mean(), abs=1e-12)
    assert row["dpi_violations"] == f"0 / {exact.height // 2}"  # layer 2 equals layer 1: no violation


def test_the_command_prints_the_table_and_writes_json_and_csv(trial, tmp_path, capsys):
    assert main(["compare", str(trial)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("synthetic12")]
    assert len(lines) == 2 and "bin1000" in lines[0] and "kde" in lines[1] and "0.0 / 0.0" in lines[0]
    assert "I(X;T) |error|: mean / worst" in text
    assert main(["compare", str(trial), "--json", "--csv", str(tmp_path / "table.csv")]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = compare([trial])
    assert len(rows) == expected.height
    for row, want in zip(rows, expected.to_dicts()):  # Polars' sums may run in another order: the last bits
        assert row == pytest.approx(want, abs=1e-12)
    written = pl.read_csv(tmp_path / "table.csv")
    assert written["estimator"].to_list() == ["bin1000", "kde"]
    assert written["mi_xt_error_mean"].to_list() == pytest.approx(expected["mi_xt_error_mean"].to_list(), abs=1e-12)


@pytest.mark.parametrize("case", ["no results", "missing", "no exact", "only exact"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    target = tmp_path / "in"
    target.mkdir()
    if case == "missing":
        target = tmp_path / "nothing-here"
    elif case == "no exact":
        write_trial(target / "t", *curves([0], epochs=3, layers=2, estimators=("bin30",)))
    elif case == "only exact":
        write_trial(target / "t", *curves([0], epochs=3, layers=2))
    assert main(["compare", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ibray: error: ") and err.count("\n") == 1
    expected = {
        "no results": "no ibray results",
        "missing": "no such file",
        "no exact": "no exact rows",
        "only exact": "only exact rows",
    }
    assert expected[case] in err


def test_a_csv_among_the_results_read_is_refused_before_anything_is_written(trial, capsys):
    before = sorted(p.relative_to(trial) for p in trial.rglob("*"))
    part = next(trial.glob("mi/*.parquet"))
    for target in (part, trial / "compare.csv"):  # over a Parquet part, or a new file among them
        assert main(["compare", str(trial), "--csv", str(target)]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"ibray: error: --csv {target}: is inside the results {trial} that are read")
            and err.count("\n") == 1
        )
    assert sorted(p.relative_to(trial) for p in trial.rglob("*")) == before
    assert pq_rows(part) > 0  # the part is still Parquet


def pq_rows(path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
