"""Sweep files: every file under sweeps/ validates; the grid expands as stated; every error names
the file, the key, the value and what is allowed, and `ibray validate` exits 2 on it. No Ray."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ibray.cli import main
from ibray.config import TrialConfig
from ibray.data import DataError, load_dataset
from ibray.sweep import SweepError, load_sweep, parse_sweep
from ibray.sweep_folder import check_data_unchanged

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
STUDY = {  # file stem -> (trials, seeds per grid point, epochs) the protocol asks for
    "syn_8bit": (4, 50, 8000),
    "mnist_bottleneck2": (2, 20, 3000),
    "appendix_a_binning": (10, 50, 8000),
    "appendix_c_precision": (20, 50, 8000),
    "appendix_d_prefit": (4, 20, 8000),
    "appendix_e_mnist": (4, 20, 3000),
    "appendix_e_mnist_4x10": (1, 10, 3000),
    "appendix_e_mnist_conv": (1, 10, 3000),
}


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(text: str) -> str:
    with pytest.raises(SweepError) as caught:
        parse_sweep(text, "f.yaml")
    return str(caught.value)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_file_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    spec = load_sweep(path)
    assert f"trials: {len(spec.trials):,}; seed-epochs: {spec.seed_epochs:,}" in out
    assert spec.trial_count == len(spec.trials)
    assert spec.seed_epochs == sum(len(t.seeds) * (t.epochs + t.prefit_epochs) for t in spec.trials)
    ids = [t.trial_id() for t in spec.trials]
    assert len(set(ids)) == len(ids)


def test_the_study_is_covered():
    stems = {p.stem for p in SWEEP_FILES}
    assert set(STUDY) | {"quickstart"} <= stems
    for stem, (trials, seeds, epochs) in STUDY.items():
        spec = load_sweep(REPO / "sweeps" / f"{stem}.yaml")
        assert (len(spec.trials), spec.seeds, spec.trials[0].epochs) == (trials, seeds, epochs), stem
    prefit = load_sweep(REPO / "sweeps" / "appendix_d_prefit.yaml").trials[0]
    assert prefit.prefit_epochs == 1000
    binning = load_sweep(REPO / "sweeps" / "appendix_a_binning.yaml").trials[0]
    assert binning.bits == 32 and binning.estimators == ("bin30", "bin100", "bin256")
    assert {t.bits for t in load_sweep(REPO / "sweeps" / "appendix_c_precision.yaml").trials} == {4, 32}


def test_quickstart_is_offline_and_small():
    spec = load_sweep(REPO / "sweeps" / "quickstart.yaml")
    assert {t.dataset for t in spec.trials} == {"synthetic12"}
    assert {t.activation for t in spec.trials} == {"tanh", "relu"}
    assert spec.seed_epochs <= 50_000 and spec.resources == {"cpu": 1.0, "gpu": 0.0}


def test_grid_is_axes_times_seed_blocks():
    spec = parse_sweep(
        "activation: [tanh, relu]\nbits: [4, 8]\nseeds: 5\nseeds_per_trial: 2\nepochs: 7\nlearning_rate: 3e-3\n",
        "g.yaml",
        default_name="g",
    )
    assert spec.name == "g"
    assert spec.seed_blocks == ((0, 1), (2, 3), (4,))
    trials = spec.trials
    assert len(trials) == 2 * 2 * 3
    assert {(t.activation, t.bits, t.seeds) for t in trials} == {
        (a, b, s) for a in ("tanh", "relu") for b in (4, 8) for s in spec.seed_blocks
    }
    assert all(t.learning_rate == 0.003 and t.epochs == 7 for t in trials)
    assert spec.seed_epochs == 5 * 4 * 7
    space = spec.param_space()
    assert space["activation"] == {"grid_search": ["tanh", "relu"]}
    assert space["seeds"] == {"grid_search": [[0, 1], [2, 3], [4]]}
    assert space["epochs"] == 7
    # a grid point as Tune hands it to the trainable is a valid flat TrialConfig
    point = {k: (v["grid_search"][0] if isinstance(v, dict) else v) for k, v in space.items()}
    assert TrialConfig.from_dict(point) == trials[0]


def test_seeds_forms_and_list_valued_keys():
    assert parse_sweep("seeds: '0-2,7'\n").seed_blocks == ((0, 1, 2, 7),)
    assert parse_sweep("seeds: [3, 1]\nseeds_per_trial: 1\n").seed_blocks == ((3,), (1,))
    spec = parse_sweep("estimators: [[exact], [exact, bin30]]\nbin_range: [-2, 2]\n")
    assert spec.axes == {"estimators": [("exact",), ("exact", "bin30")]}
    assert {t.bin_range for t in spec.trials} == {(-2.0, 2.0)}
    assert parse_sweep("estimators: [exact, bin30]\n").trials[0].estimators == ("exact", "bin30")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("architectures: [syn]\n", ["f.yaml: architectures: unknown key; did you mean 'architecture'?"]),
        ("bits: 7.5\n", ["f.yaml: bits: 7.5 is not allowed; give an integer"]),
        ("bits: 17\n", ["f.yaml: bits: 17 is not allowed; use 2..16, or 32"]),
        ("activation: [tanh, swish]\n", ["f.yaml: activation: unknown value 'swish'; allowed: tanh, relu"]),
        ("activation: [tanh, tanh]\n", ["f.yaml: activation: 'tanh' is listed twice"]),
        ("seeds: [1, 2, 2]\n", ["f.yaml: seeds: [2] appear more than once", "value [1, 2, 2]", "allowed:"]),
        ("seeds: 0\n", ["f.yaml: seeds:", "at least 1"]),
        ("learning_rate: fast\n", ["f.yaml: learning_rate: 'fast' is not allowed; give a number"]),
        (
            "resources: {cpu: 0, tpu: 1}\n",
            ["f.yaml: resources.cpu: 0", "f.yaml: resources.tpu: unknown resource; allowed: cpu, gpu"],
        ),
        ("estimators: [exact, bin1]\n", ["f.yaml: estimators: unknown estimator 'bin1'; allowed: exact, bin<n>"]),
        ("name: 'a/b'\n", ["f.yaml: name: 'a/b' is not a usable folder name"]),
        (
            "dataset: synthetic12\narchitecture: [syn, conv]\n",
            ["f.yaml: architecture: 'conv' does not fit dataset 'synthetic12'; for synthetic12 use syn"],
        ),
        ("dataset: mnist\n", ["f.yaml: architecture: 'syn' does not fit dataset 'mnist'"]),
        ("epochs: 0\n", ["f.yaml: epochs: train for at least one epoch"]),
        ("- a\n- b\n", ["f.yaml: a sweep file is a mapping"]),
        ("a: [\n", ["f.yaml: not valid YAML: line 2, column 1: expected the node content, but found '<stream end>'"]),
        (
            "a: 'x\n",
            [
                "f.yaml: not valid YAML: line 2, column 1: found unexpected end of stream (while scanning a quoted scalar at line 1, column 4)"
            ],
        ),
        (
            "a: 1\n\tb: 2\n",
            ["f.yaml: not valid YAML: line 2, column 1: found character '\\t' that cannot start any token"],
        ),
        ("a: b: c\n", ["f.yaml: not valid YAML: line 1, column 5: mapping values are not allowed here"]),
        ("a: \x01\n", ["f.yaml: not valid YAML: line 1: character U+0001 is not allowed"]),
        (
            "name: a\nbits: 8\nepochs: 3\nbits: 4\n",
            ["f.yaml: line 4: key 'bits' is given twice (first on line 2); keep one"],
        ),
        ("resources:\n  cpu: 1\n  cpu: 2\n", ["f.yaml: line 3: key 'cpu' is given twice (first on line 2)"]),
        ("", ["f.yaml: the file states nothing", "name: my-sweep"]),
        ("# a comment only\n", ["f.yaml: the file states nothing"]),
        ("{}\n", ["f.yaml: the file states nothing"]),
        (
            "name: café\n",
            [
                "f.yaml: name: 'café' is not a usable folder name; use ASCII letters (A-Z, a-z), digits, '_', '.' and '-'"
            ],
        ),
        ("name: 'ab\n'\n", ["f.yaml: name: 'ab ' is not a usable folder name"]),
        (f"name: {'a' * 101}\n", ["is not a usable folder name", "at most 100 characters"]),
        ("learning_rate: .inf\n", ["f.yaml: learning_rate: inf is not allowed; give a finite number > 0"]),
        ("learning_rate: .nan\n", ["f.yaml: learning_rate: nan is not allowed"]),
        ("learning_rate: inf\n", ["f.yaml: learning_rate: inf is not allowed"]),
        ("learning_rate: 1e400\n", ["f.yaml: learning_rate: inf is not allowed"]),
        ("learning_rate: -0.1\n", ["f.yaml: learning_rate: -0.1 is not allowed"]),
        ("learning_rate: 0\n", ["f.yaml: learning_rate: 0.0 is not allowed"]),
        ("learning_rate: [0.1, .inf]\n", ["f.yaml: learning_rate: inf is not allowed"]),
        ("ema_decay: .nan\n", ["f.yaml: ema_decay: nan is not allowed; give a number strictly between 0 and 1"]),
        (
            "bin_range: [-.inf, .inf]\n",
            ["f.yaml: bin_range: [-inf, inf] is not allowed; give [low, high], two finite numbers"],
        ),
        ("bin_range: [a, 1]\n", ["f.yaml: bin_range: ['a', 1] is not allowed"]),
        ("estimators: [1, 2]\n", ["f.yaml: estimators: unknown estimator 1"]),
        ("resources: {cpu: .inf}\n", ["f.yaml: resources.cpu: inf is not allowed"]),
        ("seeds: 100000000\n", ["f.yaml: seeds: a count of 100,000,000 seeds; give at least 1 and at most 1,000,000"]),
        ("seeds: '0-99999999999'\n", ["f.yaml: seeds: '0-99999999999' gives more than 1,000,000 seeds"]),
        ("max_trials: 0\n", ["f.yaml: max_trials: 0 is not allowed; give a positive integer"]),
        ("epochs: [0, 5]\nprefit_epochs: [0, 2]\n", ["f.yaml: epochs: train for at least one epoch"]),
        ("dataset: [synthetic12, mnist]\n", ["f.yaml: architecture: 'syn' does not fit dataset 'mnist'"]),
        ("architecture: [8-4-2, 8-4-2]\n", ["f.yaml: architecture: '8-4-2' is listed twice"]),
        ("architecture: [8-4-2, 0]\n", ["f.yaml: architecture: '0' has a layer of width 0"]),
        (
            "architecture: 2020-01-02\n",
            ["f.yaml: architecture: YAML reads 2020-01-02 as a date; quote the widths, e.g. architecture: '2020-1-2'"],
        ),
        (
            "dataset: [mnist, synthetic12]\narchitecture: [16-8, conv]\n",
            ["f.yaml: architecture: 'conv' does not fit dataset 'synthetic12'"],
        ),
        ("dataset: data.tsv\n", ["f.yaml: dataset: '", "data.tsv' is a file of unknown type '.tsv'"]),
        ("label_column: [a, b]\n", ["f.yaml: label_column: ['a', 'b']: a list is not allowed here"]),
        ("label_column: 'x@y'\n", ["f.yaml: label_column: 'x@y' is not allowed"]),
    ],
)
def test_errors_name_file_key_value_and_what_is_allowed(text, expected):
    message = errors_of(text)
    for part in expected:
        assert part in message


def test_every_problem_is_reported_at_once():
    message = errors_of("bits: 7.5\nlearning_rate: fast\nwhat: 1\n")
    assert len(message.splitlines()) == 3


def test_prefit_epochs_alone_are_enough():
    assert parse_sweep("epochs: 0\nprefit_epochs: 3\n").trials[0].prefit_epochs == 3


def test_validate_exits_2_with_one_line_per_problem(tmp_path, capsys):
    path = write(tmp_path, "architecture: conv\nseeds: [1, 1]\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ibray: error: {path}: seeds:")
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the sweep file" in capsys.readouterr().err
    path = write(tmp_path, "architecture: conv\n")
    assert main(["validate", str(path)]) == 2
    assert "architecture: 'conv' does not fit dataset 'synthetic12'" in capsys.readouterr().err


def test_sweep_refuses_a_bad_file_before_starting_ray(tmp_path, capsys):
    path = write(tmp_path, "bits: 1\n")
    assert main(["sweep", str(path), "--results", str(tmp_path / "r")]) == 2
    assert "bits: 1 is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_sweep_file_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\n# caf\u00e9\nbits: 4\n".encode("latin-1"))
    with pytest.raises(SweepError) as caught:
        load_sweep(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 on line 2); save the sweep file as UTF-8"
    path.write_bytes("\ufeffname: bom\nbits: 4\n".encode("utf-8"))  # what some editors write
    assert load_sweep(path).constants == {"bits": 4}


def test_a_folder_is_not_a_sweep_file(tmp_path):
    with pytest.raises(SweepError, match="not a file; give a sweep file"):
        load_sweep(tmp_path)


def test_the_default_name_comes_from_the_file_and_must_be_usable(tmp_path):
    path = write(tmp_path, "bits: 4\n", name="my sweep.yaml")
    with pytest.raises(SweepError, match=r"name: 'my sweep' \(the file's stem, as no name: is given\) is not a usable"):
        load_sweep(path)


AXES_OF_A_MILLION = (
    "activation: [tanh, relu, sigmoid, elu, leaky_relu, linear]\n"
    "bits: [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32]\n"
    f"learning_rate: {[round(0.01 * i, 2) for i in range(1, 11)]}\n"
    f"batch_size: {list(range(1, 21))}\n"
    "seeds: 1000\nseeds_per_trial: 10\nepochs: 10\n"
)


def test_an_absurd_grid_is_refused_with_its_size_and_the_way_out():
    message = errors_of(AXES_OF_A_MILLION)
    assert message.splitlines() == [
        "f.yaml: max_trials: the grid has 1,920,000 trials (6 activation x 16 bits x 10 learning_rate x "
        "20 batch_size x 100 seed block(s)) and 192,000,000 seed-epochs, more than max_trials 100,000 "
        "(the default); split the file into smaller sweeps, or set max_trials: 1920000 if you mean to run all of it"
    ]
    message = errors_of("seeds: 50\nepochs: 30000000\n")
    assert message == (
        "f.yaml: max_seed_epochs: the grid has 1 trial (1 seed block(s)) and 1,500,000,000 seed-epochs, more than "
        "max_seed_epochs 1,000,000,000 (the default); split the file into smaller sweeps, or set "
        "max_seed_epochs: 1500000000 if you mean to run all of it"
    )


def test_a_big_grid_validates_per_axis_value_when_its_limit_is_raised(capsys, tmp_path):
    spec = parse_sweep(f"max_trials: 2000000\n{AXES_OF_A_MILLION}", "f.yaml")
    assert spec.trial_count == 1_920_000 and spec.seeds == 1000
    assert spec.seed_epochs == 1_920_000 * 10 * 10
    assert spec.first_trial() == TrialConfig(
        activation="tanh", bits=2, learning_rate=0.01, batch_size=1, seeds=tuple(range(10)), epochs=10
    )
    path = write(tmp_path, f"name: big\nmax_trials: 2000000\n{AXES_OF_A_MILLION}")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "seeds: 1000 (0-999) in 100 block(s) of 10 per grid point" in out
    assert "trials: 1,920,000; seed-epochs: 192,000,000" in out


def test_seed_epochs_count_every_epochs_and_prefit_pair():
    spec = parse_sweep("epochs: [3, 5, 7]\nprefit_epochs: [0, 2]\nbits: [4, 8]\nseeds: 7\nseeds_per_trial: 3\n")
    assert spec.trial_count == len(spec.trials) == 3 * 2 * 2 * 3
    assert spec.seed_epochs == sum(len(t.seeds) * (t.epochs + t.prefit_epochs) for t in spec.trials) == 504


def test_a_duplicate_among_many_seeds_is_named():
    seeds = ", ".join(map(str, [*range(20_000), 19_999]))
    assert "f.yaml: seeds: [19999] appear more than once" in errors_of(f"seeds: [{seeds}]\n")


# -- your own networks and data files ------------------------------------------------------------
def test_data_files_are_pinned_once_and_every_trial_gets_the_same_value(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative data paths are taken from the working directory
    np.savez(tmp_path / "a.npz", x=np.arange(60.0).reshape(30, 2), y=np.arange(30) % 3)
    (tmp_path / "b.csv").write_text("u,v,target\n" + "".join(f"{i},{i * i % 7},{i % 2}\n" for i in range(30)))
    text = "name: mine\ndataset: [a.npz, b.csv]\nlabel_column: target\narchitecture: [8-4-2, 16]\nseeds: 4\nseeds_per_trial: 2\n"
    path = write(tmp_path, text)
    spec = load_sweep(path)
    sha = {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.npz", "b.csv")}
    pinned = [f"{tmp_path}/a.npz@{sha['a.npz']}", f"{tmp_path}/b.csv#target@{sha['b.csv']}"]
    assert spec.axes == {"dataset": pinned, "architecture": ["8-4-2", "16"]}  # 'architecture: 16' is a width
    assert [t.dataset for t in spec.trials] == [d for d in pinned for _ in range(4)]
    assert spec.param_space()["dataset"] == {"grid_search": pinned}
    assert len({t.trial_id() for t in spec.trials}) == 8
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"axis dataset: a.npz@{sha['a.npz'][:8]}, b.csv#target@{sha['b.csv'][:8]}" in out
    assert f"data file b.csv#target@{sha['b.csv'][:8]}: {tmp_path}/b.csv, SHA-256 {sha['b.csv']}" in out


def test_a_data_file_pinned_by_hand_is_checked_when_it_loads(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(60.0).reshape(30, 2), y=np.arange(30) % 3)
    sha = hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    spec = parse_sweep(f"dataset: {tmp_path}/a.npz@{'0' * 64}\n")
    assert spec.trials[0].dataset == f"{tmp_path}/a.npz@{'0' * 64}"  # taken as written: no file read
    with pytest.raises(
        DataError,
        match=rf"the file changed: its SHA-256 is {sha[:12]}\.\.\., but this trial was set up with 000000000000",
    ):
        load_dataset(spec.trials[0].dataset)


def test_a_sweep_folder_without_trials_has_nothing_to_compare(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(60.0).reshape(30, 2), y=np.arange(30) % 3)
    spec = parse_sweep(f"dataset: {tmp_path}/a.npz\n")
    for folder in (tmp_path / "absent", tmp_path / "empty"):  # no folder, and one without trials/
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert check_data_unchanged(spec, str(folder)) is None
    assert not (tmp_path / "absent").exists() and list((tmp_path / "empty").iterdir()) == []  # nothing made
    # the same folder with a trial of another version of the file is refused: the check looks
    trial = tmp_path / "empty" / "trials" / "t1"
    trial.mkdir(parents=True)
    other = f"{tmp_path}/a.npz@{'0' * 64}"
    (trial / "trial.json").write_text(json.dumps({"trial": "t1", "status": "running", "config": {"dataset": other}}))
    with pytest.raises(SweepError, match=r"started on the data file .*a.npz with SHA-256 000000000000\.\.\."):
        check_data_unchanged(spec, str(tmp_path / "empty"))


def test_unbounded_sweep_files_are_refused_quickly_in_one_readable_line(tmp_path, capsys):
    import time

    nine = ", ".join(["x"] * 9)
    levels = [f"l0: &l0 [{nine}]"] + [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9)]
    bomb = write(
        tmp_path, "name: bomb\n" + "\n".join(levels) + "\nactivation: [" + ", ".join(["*l8"] * 9) + "]\n", "bomb.yaml"
    )
    loop = write(tmp_path, "name: loop\nactivation: &a [tanh, *a]\n", "loop.yaml")
    huge = write(tmp_path, "name: huge\nactivation: " + "x" * 2_000_000 + "\n", "huge.yaml")
    long_value = write(tmp_path, "name: long\nactivation: " + "x" * 200_000 + "\n", "long.yaml")
    cases = {
        bomb: "aliases expand to more than 100,000 values",  # 9^9 values: 3.4 GB and a MemoryError before
        loop: "an alias refers to a value that contains it",
        huge: "2,000,024 bytes is too large for a sweep file",
        long_value: "activation: unknown value",
    }
    for path, problem in cases.items():
        started = time.time()
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err and len(err) < 1100, (path.name, err[:500])
        assert time.time() - started < 5, path.name
    # the long value is cut in the middle; the fix at the end of the line stays
    err_long = (main(["validate", str(long_value)]), capsys.readouterr().err)[1]
    assert "characters cut" in err_long and err_long.rstrip().endswith(
        "allowed: tanh, relu, sigmoid, elu, leaky_relu, linear"
    )
    # aliases within the bound still load: the activations reused as an anchor's values
    fine = parse_sweep(
        "name: ok\nactivation: &acts [tanh, relu]\nestimators: [exact]\n<<: {architecture: syn}\n", "ok.yaml"
    )
    assert sorted({t.activation for t in fine.trials}) == ["relu", "tanh"]


def test_an_own_modules_measurement_is_sized_for_a_trials_seeds_not_one(tmp_path):
    """A layer one seed can count but a trial's seeds cannot: the sweep is refused when loaded,
    naming the trial's seed count (the grid check once sized it for one seed and let it pass)."""
    from ibray.module_pin import measurement_bytes, memory_limit

    (tmp_path / "nets.py").write_text(
        "from torch import nn\n\n\ndef broad():\n    return nn.Sequential(nn.Linear(12, 50000), nn.ReLU(), nn.Linear(50000, 2))\n"
    )
    one = measurement_bytes([50000, 2], 4096, 1, 8)  # synthetic12: 4096 samples, 2 classes
    seeds = memory_limit() // one + 1
    assert one < memory_limit() < measurement_bytes([50000, 2], 4096, seeds, 8)
    text = f"name: broad\narchitecture: nets.py:broad\nmeasure: ['1']\nseeds: {seeds}\nseeds_per_trial: {seeds}\n"
    (tmp_path / "fits.yaml").write_text(text.replace(f": {seeds}\n", ": 1\n"))
    assert load_sweep(tmp_path / "fits.yaml").trials[0].seeds == (0,)
    (tmp_path / "broad.yaml").write_text(text)
    with pytest.raises(SweepError, match=rf"layer '1' of nets.py:broad@\w+ is 50,000 neurons wide; .* x {seeds} seeds"):
        load_sweep(tmp_path / "broad.yaml")
