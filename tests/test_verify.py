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
        ("prefit", 0), ("prefit", 3), ("prefit", 4), ("train", 2), ("train", 5), ("train", 8), ("train", 10)
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
    table = table.set_column(table.schema.get_field_index("restarts"), "restarts", pa.array([r + 1 for r in restarts], pa.int32()))
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
    for part in sorted((folder / "mi").glob("part-*.parquet"))[2:] + sorted((folder / "metrics").glob("part-*.parquet"))[2:]:
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
