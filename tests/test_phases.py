"""Tests of analysis.phases: phase epochs of crafted curves, DPI violations of crafted rows."""

from __future__ import annotations

import pyarrow as pa
import pytest
from analysis_fixtures import table, write_trial

from analysis import aggregate, phases
from analysis.load import load

EPOCHS = list(range(11))
MI_TY = [0.0, 0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
MI_XT = [5.0, 6.0, 8.0, 10.0, 9.0, 7.0, 6.0, 6.0, 6.0, 6.0, 6.0]


def stats_of(tmp_path, mi: pa.Table):
    write_trial(tmp_path / "t", mi, table("metrics", epoch=[0]))
    results = load([tmp_path])
    return results, aggregate.mi_stats(results.mi)


def test_fitting_and_compression_of_a_crafted_curve(tmp_path):
    _, stats = stats_of(tmp_path, table("mi", epoch=EPOCHS, mi_xt=MI_XT, mi_ty=MI_TY))
    row = phases.phases(stats, threshold=0.05).collect().row(0, named=True)
    # I(T;Y) first exceeds 0 + 0.05 at epoch 2 and reaches 1.0 - 0.05 at epoch 5
    assert (row["fit_start"], row["fit_end"], row["fit_bits"]) == (2, 5, pytest.approx(1.0))
    # I(X;T) peaks at epoch 3 (10 bits), falls to 6 bits, first within 0.05 of it at epoch 6
    assert (row["compress_start"], row["compress_end"], row["compress_bits"]) == (3, 6, pytest.approx(4.0))


def test_threshold_moves_the_phase_ends(tmp_path):
    _, stats = stats_of(tmp_path, table("mi", epoch=EPOCHS, mi_xt=MI_XT, mi_ty=MI_TY))
    row = phases.phases(stats, threshold=0.2).collect().row(0, named=True)
    assert (row["fit_start"], row["fit_end"]) == (3, 4)  # 0.5 > 0.2; 0.9 >= 0.8
    assert (row["compress_start"], row["compress_end"]) == (3, 6)


def test_flat_curves_have_no_phases(tmp_path):
    _, stats = stats_of(tmp_path, table("mi", epoch=EPOCHS, mi_xt=[4.0] * 11, mi_ty=[0.5] * 11))
    row = phases.phases(stats).collect().row(0, named=True)
    assert row["fit_start"] is None and row["fit_end"] is None and row["fit_bits"] == 0.0
    assert row["compress_start"] is None and row["compress_end"] is None and row["compress_bits"] == 0.0


def test_rising_only_curve_has_no_compression(tmp_path):
    _, stats = stats_of(tmp_path, table("mi", epoch=EPOCHS, mi_xt=[float(e) for e in EPOCHS], mi_ty=MI_TY))
    row = phases.phases(stats).collect().row(0, named=True)
    assert row["compress_bits"] == 0.0 and row["compress_start"] is None


def test_dpi_violations_counted(tmp_path):
    epochs = [0, 1, 2]
    rows = []
    for estimator, layer2_xt, layer2_ty in (
        ("exact", [3.0, 3.0, 3.0], [0.4, 0.4, 0.4]),  # below layer 1 everywhere
        ("bin30", [5.0, 3.0, 6.0], [0.4, 0.6, 0.4]),  # above layer 1: xt at epochs 0, 2; ty at epoch 1
    ):
        rows.append(table("mi", estimator=estimator, layer=1, epoch=epochs, mi_xt=[4.0] * 3, mi_ty=[0.5] * 3))
        rows.append(table("mi", estimator=estimator, layer=2, epoch=epochs, mi_xt=layer2_xt, mi_ty=layer2_ty))
        rows.append(table("mi", estimator=estimator, layer=3, epoch=epochs, mi_xt=[1.0] * 3, mi_ty=[0.1] * 3))
    results, _ = stats_of(tmp_path, pa.concat_tables(rows))
    found = phases.dpi_violations(results.mi).collect()
    counts = {
        (e, layer): (xt, ty, both, checked)
        for e, layer, xt, ty, both, checked in found.select(
            "estimator", "layer", "dpi_xt", "dpi_ty", "dpi", "checked"
        ).rows()
    }
    assert counts == {
        ("bin30", 2): (2, 1, 3, 3),
        ("bin30", 3): (0, 0, 0, 3),
        ("exact", 2): (0, 0, 0, 3),
        ("exact", 3): (0, 0, 0, 3),
    }


def test_equal_layers_within_tolerance_are_no_violation(tmp_path):
    rows = [table("mi", layer=1, epoch=[0], mi_xt=[4.0]), table("mi", layer=2, epoch=[0], mi_xt=[4.0 + 1e-12])]
    results, _ = stats_of(tmp_path, pa.concat_tables(rows))
    assert phases.dpi_violations(results.mi).collect()["dpi"].to_list() == [0]
