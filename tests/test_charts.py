"""Tests of analysis.charts: thinning, and the specs the chart functions produce."""

from __future__ import annotations

import polars as pl
import pytest
from analysis_fixtures import write_sweep

from analysis import aggregate, charts
from analysis.load import load


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    write_sweep(root, "s", 1, 3, 600, layers=3, estimators=("exact", "bin30", "bin256", "bin100"), prefit_epochs=50)
    write_sweep(root, "s4", 1, 2, 600, layers=3, bits=4, prefit_epochs=50)
    results = load([root])
    return aggregate.mi_stats(results.mi).collect(), aggregate.metrics_stats(results.metrics).collect()


def test_thinning_keeps_first_last_and_at_most_max():
    frame = pl.DataFrame({"global_epoch": list(range(8001)) * 2, "layer": [1] * 8001 + [2] * 8001})
    kept = frame.filter(charts.thinned(["layer"], 200))
    per_layer = kept.group_by("layer").agg(pl.col("global_epoch"))
    for epochs in per_layer["global_epoch"].to_list():
        assert 100 <= len(epochs) <= 200
        assert epochs[0] == 0 and epochs[-1] == 8000
        assert set(range(10)) <= set(epochs)  # log spacing keeps the early epochs
        assert max(b - a for a, b in zip(epochs, epochs[1:])) <= 8000 / 100 + 1  # even spacing covers the end
    small = pl.DataFrame({"global_epoch": list(range(50))})
    assert small.filter(charts.thinned([], 200)).height == 50


def one_group(stats, estimator="exact", bits=8):
    return stats.filter(pl.col("estimator") == estimator, pl.col("bits") == bits)


def test_information_plane_spec(stats):
    mi, _ = stats
    spec = charts.information_plane(one_group(mi), "plane").to_dict()
    line, points = spec["layer"]
    assert line["mark"]["type"] == "line" and line["encoding"]["detail"]["field"] == "layer"
    assert points["encoding"]["x"]["field"] == "mi_xt_mean" and points["encoding"]["y"]["field"] == "mi_ty_mean"
    assert points["encoding"]["color"]["field"] == "global_epoch"
    assert points["encoding"]["color"]["type"] == "quantitative"
    values = charts.rows(spec)
    assert {v["layer"] for v in values} == {1, 2, 3}
    assert len(values) <= 3 * 200
    assert "of 651 recorded epochs drawn" in spec["title"]["subtitle"][1]  # prefit 0..50, train 1..600


def test_mi_over_epochs_has_a_std_band(stats):
    mi, _ = stats
    group = one_group(mi)
    spec = charts.mi_over_epochs(group, "mi").to_dict()
    band, line = spec["spec"]["layer"]
    assert band["mark"]["type"] == "area" and band["encoding"]["y2"]["field"] == "high"
    first = next(
        v for v in charts.rows(spec) if v["quantity"] == "I(X;T)" and v["layer"] == 1 and v["global_epoch"] == 650
    )
    row = group.filter(pl.col("layer") == 1, pl.col("global_epoch") == 650).row(0, named=True)
    assert first["high"] - first["mean"] == pytest.approx(row["mi_xt_std"], abs=1e-4)
    assert spec["facet"]["column"]["field"] == "quantity"


def test_accuracy_chart(stats):
    _, metrics = stats
    spec = charts.accuracy(metrics.filter(pl.col("bits") == 8), "acc").to_dict()
    assert {v["split"] for v in charts.rows(spec)} == {"train", "test"}
    assert spec["layer"][1]["encoding"]["x"]["field"] == "global_epoch"


def test_comparison_orders_estimators_and_bits(stats):
    mi, _ = stats
    spec = charts.comparison(mi.filter(pl.col("bits") == 8), "estimator", "cmp").to_dict()
    assert spec["facet"]["column"]["sort"] == ["exact", "bin30", "bin100", "bin256"]
    spec = charts.comparison(mi.filter(pl.col("estimator") == "exact"), "bits", "bits").to_dict()
    assert spec["facet"]["column"]["sort"] == [4, 8]
    assert len(charts.rows(spec)) <= 2 * 3 * 100


def test_plane_and_curves_share_data_layers_and_epoch_range(stats):
    mi, _ = stats
    group = one_group(mi)
    plane = charts.information_plane(group, "plane", domain=(13.0, 1.1, 650.0), width="container").to_dict()
    curves = charts.mi_curves(group, "mi_xt", "curves", domain=(650.0, 14.0), width="container").to_dict()
    assert plane["data"] == curves["data"]  # the page stores it once
    assert plane["width"] == curves["width"] == "container"
    line, points = plane["layer"]
    assert line["encoding"]["x"]["scale"]["domain"] == [0, 13.0] and line["encoding"]["y"]["scale"]["domain"] == [
        0,
        1.1,
    ]
    assert points["encoding"]["color"]["scale"]["domain"] == [0, 650.0]
    # a legend click picks a layer; the rest is dimmed; only epochs in [epoch_from, epoch_to] drawn
    pick = next(p for p in plane["params"] if p["name"] == charts.LAYER_PICK)
    assert pick["bind"] == "legend" and pick["select"]["fields"] == ["layer"]
    assert points["encoding"]["opacity"] == {
        "condition": {"param": charts.LAYER_PICK, "value": 0.9},
        "value": charts.DIMMED,
    }
    assert {p["name"]: p["value"] for p in plane["params"] if "value" in p} == dict(
        zip([charts.EPOCH_FROM, charts.EPOCH_TO], charts.ALL_EPOCHS)
    )
    assert all(charts.EPOCH_FROM in layer["transform"][0]["filter"] for layer in plane["layer"])
    assert [t["field"] for t in points["encoding"]["tooltip"]] == [
        "layer",
        "layer_name",
        "phase",
        "epoch",
        "mi_xt_mean",
        "mi_ty_mean",
        "n",
    ]
    brush = next(p for p in curves["params"] if p["name"] == charts.EPOCH_BRUSH)
    assert brush["select"] == {"type": "interval", "encodings": ["x"]}
    assert curves["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 14.0]


def test_spread_shows_the_standard_deviation_per_layer(stats):
    mi, _ = stats
    spec = charts.spread_over_epochs(one_group(mi), "spread").to_dict()
    assert spec["transform"][0] == {"fold": ["mi_xt_std", "mi_ty_std"], "as": ["quantity", "std"]}
    assert spec["encoding"]["y"]["field"] == "std" and spec["encoding"]["strokeDash"]["field"] == "quantity"
    row = one_group(mi).filter(pl.col("layer") == 2, pl.col("global_epoch") == 650).row(0, named=True)
    drawn = next(v for v in charts.rows(spec) if v["layer"] == 2 and v["global_epoch"] == 650)
    assert drawn["mi_xt_std"] == pytest.approx(row["mi_xt_std"], abs=1e-5) and row["mi_xt_std"] > 0


def test_estimators_plane_overlays_every_estimator_in_order(stats):
    mi, _ = stats
    spec = charts.estimators_plane(mi.filter(pl.col("bits") == 8), "overlaid").to_dict()
    lines, points = spec["layer"]
    color = lines["encoding"]["color"]
    assert color["field"] == "estimator" and color["scale"]["domain"] == ["exact", "bin30", "bin100", "bin256"]
    assert color["scale"]["range"][0] == charts.EXACT_COLOR and len(set(color["scale"]["range"])) == 4
    assert points["encoding"]["shape"]["field"] == "layer" and lines["encoding"]["detail"]["field"] == "layer"
    pick = next(p for p in spec["params"] if p["name"] == charts.ESTIMATOR_PICK)
    assert pick["bind"] == "legend" and pick["select"]["fields"] == ["estimator"]
    drawn = charts.rows(spec)
    assert {(v["estimator"], v["layer"]) for v in drawn} == {
        (e, layer) for e in ("exact", "bin30", "bin100", "bin256") for layer in (1, 2, 3)
    }
    assert len({v["global_epoch"] for v in drawn}) <= charts.MAX_EPOCHS // 2


def test_estimator_gap_draws_the_gap_per_layer_over_a_zero_rule(tmp_path):
    from analysis_fixtures import curves, write_trial

    from analysis import compare

    mi, metrics = curves([0, 1], epochs=30, layers=3, estimators=("exact", "bin30"))
    write_trial(tmp_path / "t", mi, metrics)
    gaps = compare.gaps(load([tmp_path]).mi).collect()
    spec = charts.estimator_gap(gaps, "mi_ty", "bin30", domain=(-0.5, 0.5)).to_dict()
    line, zero = spec["layer"]
    assert line["encoding"]["y"]["field"] == "gap_ty" and line["encoding"]["y"]["scale"]["domain"] == [-0.5, 0.5]
    assert zero["mark"]["type"] == "rule" and zero["encoding"]["y"] == {"datum": 0}
    row = gaps.filter(pl.col("layer") == 1, pl.col("epoch") == 30).row(0, named=True)
    drawn = next(v for v in charts.rows(spec) if v["layer"] == 1 and v["epoch"] == 30)
    assert drawn["gap_ty"] == pytest.approx(row["estimate_ty"] - row["exact_ty"], abs=2e-5) and drawn["gap_ty"] > 0
