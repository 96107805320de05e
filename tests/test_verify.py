"""`ibray verify` on real results folders: complete ones pass; a deleted, duplicated or stray
part, a discarded attempt's rows and an unfinished trial are named, with exit code 1."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ibray.cli import main
from ibray.config import TrialConfig
from ibray.records import write_atomic
from ibray.run import run_trial
from ibray.verify import measured_epochs, verify_trial

CONFIG = TrialConfig(seeds=(0, 1), epochs=6, mi_every=2, write_every=2, learning_rate=0.01)


@pytest.fixture(scope="module")
def complete(tmp_path_factory, synthetic):
    out = tmp_path_factory.mktemp("verify") / "trial"
    run_trial(CONFIG, out, dataset=synthetic)
    return out


def copy(complete, tmp_path, name="copy"):
    return shutil.copytree(complete, tmp_path / name)


def run_verify(capsys, *paths) -> tuple[int, str]:
    code = main(["verify", *map(str, paths)])
    return code, capsys.readouterr().out


def test_the_measuring_grid_follows_from_the_config():
    config = TrialConfig(prefit_epochs=4, epochs=10, mi_every=3, restart_epoch=5)
    assert measured_epochs(config) == [
        ("prefit", 0),
        ("prefit", 3),
        ("prefit", 4),
        ("train", 2),
        ("train", 5),
        ("train", 8),
        ("train", 10),
    ]
    assert measured_epochs(config, up_to=6) == [("prefit", 0), ("prefit", 3), ("prefit", 4), ("train", 2)]


def test_a_complete_trial_passes(capsys, complete):
    code, out = run_verify(capsys, complete)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("ok ") and "2 seed(s) x 4 measured epochs x 6 layers" in lines[0]
    assert lines[-1] == "verified 1 trial(s): 1 complete with every row exactly once"


def test_a_deleted_part_is_named_by_seed_and_epoch(capsys, complete, tmp_path):
    folder = copy(complete, tmp_path)
    part = sorted((folder / "mi").glob("part-*.parquet"))[1]  # write 2: epochs 3-4, MI at epoch 4
    part.unlink()
    code, out = run_verify(capsys, folder)
    assert code == 1
    assert "mi: seed 0: 6 rows missing at train 4 (1 epoch)" in out
    assert "mi: seed 1: 6 rows missing at train 4 (1 epoch)" in out
    assert "0 complete" in out and "1 with missing, duplicated or stray rows" in out


def test_a_duplicated_part_is_found(capsys, complete, tmp_path):
    folder = copy(complete, tmp_path)
    part = sorted((folder / "metrics").glob("part-*.parquet"))[0]
    shutil.copy(part, folder / "metrics" / "part-w000099-e000000.parquet")
    check = verify_trial(folder)
    assert not check.ok
    assert any("newer than trial.json's last write (3)" in p for p in check.problems)
    assert "metrics: seed 0: 4 duplicated rows at train 0..2 (2 epochs)" in check.problems
    assert main(["verify", str(folder)]) == 1


def test_rows_of_a_discarded_attempt_or_a_foreign_seed_are_stray(complete, tmp_path):
    folder = copy(complete, tmp_path)
    part = sorted((folder / "metrics").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    restarts = table.column("restarts").to_pylist()
    seeds = table.column("seed").to_pylist()
    table = table.set_column(
        table.schema.get_field_index("restarts"), "restarts", pa.array([r + 1 for r in restarts], pa.int32())
    )
    info = json.loads((folder / "trial.json").read_text())
    info["restarts"] = {"0": 1, "1": 1}  # as if both seeds were rerun: attempt 0's rows must be gone
    (folder / "trial.json").write_text(json.dumps(info))
    write_atomic(table, folder / "metrics" / "part-w000001-e000002.parquet")
    problems = verify_trial(folder).problems
    assert sum("rows of discarded attempt(s) [0]" in p for p in problems) == 4  # mi and metrics, both seeds
    assert len(set(seeds)) == 2


def test_an_unfinished_trial_fails_but_its_rows_so_far_check_out(capsys, complete, tmp_path):
    folder = copy(complete, tmp_path)
    info = json.loads((folder / "trial.json").read_text())
    info.update(status="running", epochs_run=4)
    (folder / "trial.json").write_text(json.dumps(info))
    for part in (
        sorted((folder / "mi").glob("part-*.parquet"))[2:] + sorted((folder / "metrics").glob("part-*.parquet"))[2:]
    ):
        part.unlink()
    check = verify_trial(folder)
    assert check.problems == [] and not check.ok
    code, out = run_verify(capsys, folder)
    assert code == 1 and out.startswith("UNFINISHED") and "1 unfinished" in out


def test_a_sweep_folder_is_searched_and_a_path_without_trials_refused(capsys, complete, tmp_path):
    sweep = tmp_path / "sweep" / "trials"
    shutil.copytree(complete, sweep / "a")
    shutil.copytree(complete, sweep / "b")
    code, out = run_verify(capsys, tmp_path / "sweep")
    assert code == 0 and "verified 2 trial(s): 2 complete" in out
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no trial here" in err and str(tmp_path / "empty") in err
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_sweep_folder_is_checked_against_its_grid(capsys, complete, tmp_path):
    from ibray.sweep import parse_sweep

    text = "name: grid\nseeds: 2\nseeds_per_trial: 2\nepochs: 6\nmi_every: 2\nwrite_every: 2\nlearning_rate: 0.01\nactivation: [tanh, relu]\n"
    spec = parse_sweep(text, "grid.yaml")
    ran, never = sorted((t.trial_id() for t in spec.trials), key=lambda t: "relu" in t)  # tanh ran, relu did not
    assert ran == CONFIG.trial_id()
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "sweep.yaml").write_text(text)
    shutil.copytree(complete, tmp_path / "grid" / "trials" / ran)
    code, out = run_verify(capsys, tmp_path / "grid")
    assert code == 1 and f"FAILED   {never}" in out and "in the grid of" in out and "no trial.json" in out
    assert "verified 2 trial(s): 1 complete" in out
    code, out = run_verify(capsys, tmp_path)  # found from the results root too
    assert code == 1 and f"FAILED   {never}" in out
    # the trials folder alone, as the sweep verifies itself at its end: no grid to check there
    code, out = run_verify(capsys, tmp_path / "grid" / "trials")
    assert code == 0 and "verified 1 trial(s): 1 complete" in out


@pytest.mark.parametrize("change", ["missing h_t", "extra column", "other type"])
def test_a_part_off_the_declared_schema_is_named_with_its_columns(capsys, complete, tmp_path, change):
    folder = copy(complete, tmp_path)
    part = sorted((folder / "mi").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    if change == "missing h_t":
        table = table.drop(["h_t"])
    elif change == "extra column":
        table = table.append_column("bogus", pa.array([1] * table.num_rows))
    else:
        table = table.set_column(
            table.schema.get_field_index("mi_xt"), "mi_xt", table.column("mi_xt").cast(pa.float32())
        )
    pq.write_table(table, part)
    code, out = run_verify(capsys, folder)
    expected = {
        "missing h_t": "missing h_t",
        "extra column": "extra bogus",
        "other type": "mi_xt (float, declared double)",
    }[change]
    line = next(line for line in out.splitlines() if line.startswith("FAILED"))
    assert code == 1 and part.name in line and "columns differ from the declared schema" in line and expected in line
    assert len(line) < 400


def test_a_write_in_progress_of_a_running_trial_is_not_a_fault(capsys, complete, tmp_path):
    folder = copy(complete, tmp_path)
    info = json.loads((folder / "trial.json").read_text())
    info.update(status="running", epochs_run=4, parts=2)  # the third write's parts are on disk, trial.json not yet
    (folder / "trial.json").write_text(json.dumps(info))
    check = verify_trial(folder)
    assert check.problems == [] and not check.ok
    info.update(status="complete", epochs_run=6)  # once complete, the same newer parts are a fault
    (folder / "trial.json").write_text(json.dumps(info))
    assert any("newer than trial.json's last write (2)" in p for p in verify_trial(folder).problems)
