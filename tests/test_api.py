"""ibray.api, the notebook's functions: the README's "In a notebook" example runs as it stands,
`run` takes a config, a dict or fields (and an own module), leaves a complete trial alone and
refuses bad input with the command's errors; `rows` reads trial and sweep folders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ibray.api import rows, run
from ibray.config import TrialConfig
from ibray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NETS = Path(__file__).with_name("own_nets.py")


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### In a notebook") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_notebook_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(readme_example(), "README.md (In a notebook)", "exec"), names)
    assert names["summary"].trial in capsys.readouterr().out
    mi, metrics = names["mi"], names["metrics"]
    assert mi["seed"].unique().sort().to_list() == [0, 1, 2] and metrics.height == 3 * 11  # epochs 0, 4, ..., 40
    plane = names["plane"]
    assert plane.height == 6 * 11 and plane["mi_xt"].is_finite().all()  # 6 layers of the syn network
    assert names["chart"].to_dict()["mark"]["type"] == "line"
    assert (tmp_path / "results" / "notebook" / "trial.json").exists()


def test_run_takes_a_config_a_dict_or_fields_and_leaves_a_complete_trial_alone(tmp_path):
    config = TrialConfig(seeds=(0, 1), epochs=2, learning_rate=0.003)
    first = run(config, tmp_path / "a", estimators="exact,bin30")
    assert first.seeds == 2 and first.epochs == 2
    assert run(config, tmp_path / "a", estimators="exact,bin30") is None  # complete: not trained again
    again = run(config.to_dict() | {"estimators": ["exact", "bin30"]}, tmp_path / "a", overwrite=True)
    assert again.trial == first.trial
    mi, metrics = rows(tmp_path / "a")
    assert set(mi["estimator"]) == {"exact", "bin30"} and metrics.height == 2 * 3
    own = run(architecture=f"{NETS}:mlp_batch_norm", measure="2,4", epochs=1, out=tmp_path / "own")
    mi, _ = rows(tmp_path / "a", tmp_path / "own")  # several folders at once
    assert own.trial in set(mi["trial"]) and {"2", "4", "output"} <= set(mi["layer_name"])


def test_run_refuses_bad_input_with_the_commands_errors(tmp_path):
    with pytest.raises(ConfigError, match="^bits: 1 is not allowed"):
        run(bits=1, out=tmp_path / "bad")
    with pytest.raises(ConfigError, match="^unknown key"):
        run({"bitz": 4}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(TypeError, match="needs a results folder"):
        rows()
