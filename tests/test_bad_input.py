"""Bad input, as a catalogue: every case goes through the `ibray` command and must end with exit
code 2, one error line that names the file, key or value, no traceback, and nothing written or
changed anywhere under the test's folder (which is also the working directory).

Most cases call `ibray.cli.main` in-process, since each `ibray` process spends seconds importing
torch; a few run the real command to prove the exit code and the clean stderr end to end. None
of them reaches Ray or a training step: every check runs before any work starts.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from analysis_fixtures import curves, write_trial

from ibray.cli import main

IBRAY = str(Path(sys.executable).parent / "ibray")
ERROR = "ibray: error: "
REPORT_ERROR = "ibray report: error: "  # analysis.report's own parser names itself so, as argparse does
NOT_UTF8 = "name: latin\n# caf\u00e9\nbits: 4\n".encode("latin-1")
A_MILLION_TRIALS = (
    "name: huge\n"
    "activation: [tanh, relu, sigmoid, elu, leaky_relu, linear]\n"
    "bits: [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32]\n"
    "learning_rate: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1]\n"
    f"batch_size: {list(range(1, 21))}\n"
    "seeds: 1000\nseeds_per_trial: 10\nepochs: 10\n"
)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{w}" stands for the test's folder
    expected: tuple[str, ...]  # each must be in the one error line
    sweep_file: str | bytes | None = None  # written to {w}/s.yaml first

    def args(self, w: Path) -> list[str]:
        return [a.replace("{w}", str(w)) for a in self.argv]

    def parts(self, w: Path) -> list[str]:
        return [p.replace("{w}", str(w)) for p in self.expected]

    @property
    def prefix(self) -> str:
        return REPORT_ERROR if self.argv[0] == "report" else ERROR


def trial(id: str, args: list[str], *expected: str) -> Case:
    out = [] if "--out" in args else ["--out", "{w}/out"]
    return Case(f"trial-{id}", ("trial", "--epochs", "1", *out, *args), expected)


TRIAL_CASES = [
    trial("out-is-a-file", ["--out", "{w}/afile"], "--out {w}/afile: is a file, not a folder; pick another --out"),
    trial(
        "out-under-a-file",
        ["--out", "{w}/afile/sub"],
        "--out {w}/afile/sub: {w}/afile is a file, so no folder can be made",
    ),
    trial(
        "out-under-proc", ["--out", "/proc/ibray-bad-input/t"], "--out /proc/ibray-bad-input/t: cannot write in /proc ("
    ),
    trial(
        "out-holds-other-files",
        ["--out", "{w}/foreign"],
        "--out {w}/foreign: the folder holds other files (notes.txt) but no trial.json",
        "pick a new or empty --out",
    ),
    trial(
        "out-holds-other-files-overwrite",
        ["--out", "{w}/foreign", "--overwrite"],
        "--out {w}/foreign: the folder holds other files",
    ),
    trial(
        "learning-rate-inf", ["--learning-rate", "inf"], "learning_rate: inf is not allowed; give a finite number > 0"
    ),
    trial("learning-rate-nan", ["--learning-rate", "nan"], "learning_rate: nan is not allowed"),
    trial("learning-rate-negative", ["--learning-rate", "-0.001"], "learning_rate: -0.001 is not allowed"),
    trial("learning-rate-zero", ["--learning-rate", "0"], "learning_rate: 0.0 is not allowed"),
    trial("min-train-acc", ["--min-train-acc", "1.5"], "min_train_acc: 1.5 is not allowed; give an accuracy in [0, 1]"),
    trial("dataset", ["--dataset", "cifar"], "dataset: unknown value 'cifar'; allowed: synthetic12, szt, mnist"),
    trial("architecture", ["--architecture", "resnet"], "architecture: unknown value 'resnet'; allowed: syn,"),
    trial("activation", ["--activation", "swish"], "activation: unknown value 'swish'; allowed: tanh,"),
    trial("bits-low", ["--bits", "1"], "bits: 1 is not allowed; use 2..16, or 32"),
    trial("bits-between", ["--bits", "24"], "bits: 24 is not allowed"),
    trial("estimator", ["--estimators", "exact,mine"], "estimators: unknown estimator 'mine'; allowed: exact, bin<n>"),
    trial("seeds-twice", ["--seeds", "1,1"], "seeds: [1] appear more than once"),
    trial("seeds-absurd", ["--seeds", "0-99999999999"], "seeds: '0-99999999999' gives more than 1,000,000 seeds"),
    trial("device", ["--device", "tpu"], "device: unknown value 'tpu'; allowed: auto, cpu, cuda"),
    trial("pairing", ["--dataset", "mnist"], "architecture: 'syn' does not fit dataset 'mnist'; for mnist use"),
    trial("epochs", ["--epochs", "-1"], "epochs: -1 must be a non-negative integer"),
    trial("batch-size", ["--batch-size", "0"], "batch_size: 0 must be a positive integer"),
    trial("init", ["--init", "he"], "init: unknown value 'he'; allowed: truncated_normal, glorot"),
    trial("range-tracking", ["--range-tracking", "median"], "range_tracking: unknown value 'median'"),
    trial(
        "missing-szt",
        ["--dataset", "szt", "--data-dir", "{w}/nodata"],
        "{w}/nodata/var_u.mat does not exist",
        "ibray data download szt",
    ),
    trial(
        "missing-mnist",
        ["--dataset", "mnist", "--architecture", "bottleneck2", "--data-dir", "{w}/nodata"],
        "{w}/nodata/mnist/train-images-idx3-ubyte",
        "ibray data download mnist",
    ),
    trial(
        "corrupt-szt",
        ["--dataset", "szt", "--data-dir", "{w}/corrupt"],
        "{w}/corrupt/var_u.mat is not a readable MATLAB file",
    ),
    # the user's own networks and data files (made by the workspace fixture under {w}/data)
    trial(
        "width-zero",
        ["--architecture", "8-0-2"],
        "architecture: '8-0-2' has a layer of width 0; every width must be at least 1",
    ),
    trial(
        "width-huge",
        ["--architecture", "4096-2"],
        "architecture: '4096-2' has a layer of 4,096 neurons; at most 1,024 per layer",
    ),
    trial(
        "widths-text",
        ["--architecture", "8-four-2"],
        "architecture: unknown value '8-four-2'; allowed: syn,",
        "or hidden widths joined by '-'",
    ),
    trial(
        "conv-on-a-file",
        ["--dataset", "{w}/data/good.npz", "--architecture", "conv"],
        "architecture: 'conv' needs images",
        "use a dense network",
    ),
    trial("file-missing", ["--dataset", "{w}/data/absent.npz"], "{w}/data/absent.npz: no such file; check the path"),
    trial(
        "file-unknown-type",
        ["--dataset", "{w}/data/table.txt"],
        "dataset: '{w}/data/table.txt' is a file of unknown type '.txt'; give a .npz file",
    ),
    trial(
        "file-a-folder",
        ["--dataset", "{w}/data/folder.npz"],
        "{w}/data/folder.npz: cannot read the data file (Is a directory)",
    ),
    trial(
        "npz-corrupt",
        ["--dataset", "{w}/data/corrupt.npz"],
        "{w}/data/corrupt.npz: not a readable .npz file",
        "numpy.savez(path, x=features, y=labels)",
    ),
    trial("npz-no-y", ["--dataset", "{w}/data/no_y.npz"], "{w}/data/no_y.npz: no array 'y' (arrays found: x, labels)"),
    trial(
        "npz-pickled",
        ["--dataset", "{w}/data/pickled.npz"],
        "{w}/data/pickled.npz: holds Python objects (pickled arrays)",
    ),
    trial(
        "npz-nan",
        ["--dataset", "{w}/data/nan.npz"],
        "{w}/data/nan.npz: x holds 2 value(s) that are NaN, infinite",
        "first at row 3, feature 1",
        "replace or drop",
    ),
    trial(
        "npz-lengths",
        ["--dataset", "{w}/data/lengths.npz"],
        "{w}/data/lengths.npz: x has 40 samples but y has 39 labels; give one label per sample",
    ),
    trial(
        "npz-fractional-labels",
        ["--dataset", "{w}/data/fractional.npz"],
        "{w}/data/fractional.npz: y holds 0.5 at row 7, not an integer class label",
    ),
    trial(
        "npz-negative-labels",
        ["--dataset", "{w}/data/negative.npz"],
        "{w}/data/negative.npz: y holds the negative label -1",
        "map the labels to 0..K-1",
    ),
    trial(
        "npz-label-gap",
        ["--dataset", "{w}/data/gap.npz"],
        "{w}/data/gap.npz: y runs from 0 to 2 but never holds 1; every class 0..K-1 must occur",
    ),
    trial(
        "npz-too-many-classes",
        ["--dataset", "{w}/data/classes.npz"],
        "{w}/data/classes.npz: y holds the label 5000; at most 1000 classes",
    ),
    trial(
        "npz-few-per-class",
        ["--dataset", "{w}/data/few.npz"],
        "{w}/data/few.npz: too few samples of class 1 (1) to split it with train_fraction 0.8; give every class at least 3 samples",
    ),
    trial(
        "npz-bad-split",
        ["--dataset", "{w}/data/bad_split.npz"],
        "{w}/data/bad_split.npz: the 'split' array holds 2 at row 5; mark each sample 1, true or 'train'",
    ),
    trial(
        "npz-empty-test",
        ["--dataset", "{w}/data/all_train.npz"],
        "{w}/data/all_train.npz: the 'split' array leaves the test set empty",
    ),
    trial(
        "csv-no-label",
        ["--dataset", "{w}/data/no_label.csv"],
        "{w}/data/no_label.csv: no label column 'label' (columns: a, b, target); set label_column (--label-column) to the column",
    ),
    trial(
        "csv-other-label",
        ["--dataset", "{w}/data/no_label.csv", "--label-column", "y"],
        "{w}/data/no_label.csv: no label column 'y' (columns: a, b, target)",
    ),
    trial(
        "csv-text-labels",
        ["--dataset", "{w}/data/text_labels.csv"],
        "{w}/data/text_labels.csv: label column 'label' holds text values (e.g. 'dog')",
    ),
    trial(
        "csv-text-feature",
        ["--dataset", "{w}/data/text_feature.csv"],
        "{w}/data/text_feature.csv: feature column 'colour' holds string values, not numbers",
    ),
    trial(
        "csv-empty-cell",
        ["--dataset", "{w}/data/empty_cell.csv"],
        "{w}/data/empty_cell.csv: feature column 'b' has 1 empty value(s), the first at row 2",
    ),
    trial(
        "csv-inf",
        ["--dataset", "{w}/data/inf.csv"],
        "{w}/data/inf.csv: x holds 1 value(s) that are NaN, infinite or beyond float32's range, the first at row 1, feature 0",
    ),
    trial(
        "csv-bad-split",
        ["--dataset", "{w}/data/bad_split.csv"],
        "{w}/data/bad_split.csv: the 'split' column holds 'validation' at row 1; mark each sample",
    ),
    trial("csv-corrupt", ["--dataset", "{w}/data/corrupt.csv"], "{w}/data/corrupt.csv: not a readable CSV file ("),
    trial(
        "parquet-corrupt",
        ["--dataset", "{w}/data/corrupt.parquet"],
        "{w}/data/corrupt.parquet: not a readable Parquet file (",
    ),
]

# Each is checked by `ibray validate` and by `ibray sweep`: the sweep must refuse it before Ray.
SWEEP_FILE_CASES = [
    ("not-utf8", NOT_UTF8, "{w}/s.yaml: not UTF-8 text (byte 0xe9 on line 2); save the sweep file as UTF-8"),
    (
        "learning-rate-inf",
        "name: x\nlearning_rate: .inf\n",
        "{w}/s.yaml: learning_rate: inf is not allowed; give a finite number > 0",
    ),
    ("learning-rate-nan", "name: x\nlearning_rate: .nan\n", "{w}/s.yaml: learning_rate: nan is not allowed"),
    ("learning-rate-negative", "name: x\nlearning_rate: -1e-3\n", "{w}/s.yaml: learning_rate: -0.001 is not allowed"),
    ("learning-rate-zero", "name: x\nlearning_rate: 0\n", "{w}/s.yaml: learning_rate: 0.0 is not allowed"),
    ("learning-rate-axis", "name: x\nlearning_rate: [1e-3, .inf]\n", "{w}/s.yaml: learning_rate: inf is not allowed"),
    (
        "ema-decay",
        "name: x\nema_decay: 1.5\n",
        "{w}/s.yaml: ema_decay: 1.5 is not allowed; give a number strictly between 0 and 1",
    ),
    ("bin-range", "name: x\nbin_range: [-.inf, .inf]\n", "{w}/s.yaml: bin_range: [-inf, inf] is not allowed"),
    ("empty", "", "{w}/s.yaml: the file states nothing; a sweep file is a mapping of keys to values"),
    ("comments-only", "# nothing here\n", "{w}/s.yaml: the file states nothing"),
    (
        "duplicate-key",
        "name: x\nbits: 8\nbits: 4\n",
        "{w}/s.yaml: line 3: key 'bits' is given twice (first on line 2); keep one",
    ),
    (
        "yaml-syntax",
        "name: x\na: 'x\n",
        "{w}/s.yaml: not valid YAML: line 3, column 1: found unexpected end of stream "
        "(while scanning a quoted scalar at line 2, column 4)",
    ),
    (
        "name",
        "name: caf\u00e9\n",
        "{w}/s.yaml: name: 'caf\u00e9' is not a usable folder name; use ASCII letters (A-Z, a-z)",
    ),
    ("trials", A_MILLION_TRIALS, "{w}/s.yaml: max_trials: the grid has 1,920,000 trials", "set max_trials: 1920000"),
    (
        "seed-epochs",
        "name: x\nseeds: 50\nepochs: 30000000\n",
        "{w}/s.yaml: max_seed_epochs: the grid has 1 trial",
        "1,500,000,000 seed-epochs",
    ),
    (
        "unknown-key",
        "name: x\narchitectures: [syn]\n",
        "{w}/s.yaml: architectures: unknown key; did you mean 'architecture'?",
    ),
    ("wrong-type", "name: x\nbits: 7.5\n", "{w}/s.yaml: bits: 7.5 is not allowed; give an integer (default 8)"),
    ("architecture", "name: x\narchitecture: resnet\n", "{w}/s.yaml: architecture: unknown value 'resnet'"),
    ("activation", "name: x\nactivation: [tanh, swish]\n", "{w}/s.yaml: activation: unknown value 'swish'"),
    ("dataset", "name: x\ndataset: cifar\n", "{w}/s.yaml: dataset: unknown value 'cifar'"),
    ("bits", "name: x\nbits: 17\n", "{w}/s.yaml: bits: 17 is not allowed; use 2..16, or 32"),
    ("estimator", "name: x\nestimators: [exact, bin1]\n", "{w}/s.yaml: estimators: unknown estimator 'bin1'"),
    ("seeds", "name: x\nseeds: [1, 1]\n", "{w}/s.yaml: seeds: [1] appear more than once"),
    ("resources", "name: x\nresources: {cpu: .inf}\n", "{w}/s.yaml: resources.cpu: inf is not allowed"),
    ("pairing", "name: x\ndataset: mnist\n", "{w}/s.yaml: architecture: 'syn' does not fit dataset 'mnist'"),
    ("not-a-mapping", "- name\n- bits\n", "{w}/s.yaml: a sweep file is a mapping of keys to values, not a list"),
    # relative data paths are taken from the working directory, the test's folder
    (
        "data-nan",
        "name: x\ndataset: data/nan.npz\n",
        "{w}/s.yaml: dataset: {w}/data/nan.npz: x holds 2 value(s) that are NaN",
    ),
    (
        "data-missing-in-axis",
        "name: x\ndataset: [data/good.npz, data/absent.csv]\n",
        "{w}/s.yaml: dataset: {w}/data/absent.csv: no such file",
    ),
    (
        "data-no-label",
        "name: x\ndataset: data/no_label.csv\n",
        "{w}/s.yaml: dataset: {w}/data/no_label.csv: no label column 'label'",
    ),
    (
        "data-same-file-twice",
        "name: x\ndataset: [data/good.npz, ./data/good.npz]\n",
        "{w}/s.yaml: dataset: good.npz@",
        "(the same file, pinned) is listed twice",
    ),
    (
        "label-column-axis",
        "name: x\ndataset: data/no_label.csv\nlabel_column: [a, target]\n",
        "{w}/s.yaml: label_column: ['a', 'target']: a list is not allowed here",
    ),
    (
        "widths-axis",
        "name: x\narchitecture: [8-4-2, 8-0-2]\n",
        "{w}/s.yaml: architecture: '8-0-2' has a layer of width 0",
    ),
    (
        "widths-a-date",
        "name: x\narchitecture: 2000-10-10\n",
        "{w}/s.yaml: architecture: YAML reads 2000-10-10 as a date; quote the widths",
    ),
    (
        "widths-too-many-weights",
        "name: x\narchitecture: 1024-1024-2\n",
        "{w}/s.yaml: architecture: '1024-1024-2' has 1,050,624 weights between hidden layers; at most 1,048,576",
    ),
]
SWEEP_CASES = (
    [
        Case(f"{command}-{id}", (command, "{w}/s.yaml"), tuple(expected), text)
        for command in ("validate", "sweep")
        for id, text, *expected in SWEEP_FILE_CASES
    ]
    + [
        Case(
            f"{command}-missing-file",
            (command, "{w}/missing.yaml"),
            ("{w}/missing.yaml: cannot read the sweep file (No such file",),
        )
        for command in ("validate", "sweep")
    ]
    + [
        Case(f"{command}-a-folder", (command, "{w}/foreign"), ("{w}/foreign: not a file; give a sweep file",))
        for command in ("validate", "sweep")
    ]
    + [
        Case(
            "sweep-resume-and-overwrite",
            ("sweep", "{w}/s.yaml", "--resume", "--overwrite"),
            ("--resume and --overwrite contradict",),
            "name: x\n",
        ),
        Case(
            "sweep-missing-data",
            ("sweep", "{w}/s.yaml", "--data-dir", "{w}/nodata"),
            ("{w}/nodata/var_u.mat does not exist", "ibray data download szt"),
            "name: x\ndataset: szt\nepochs: 1\n",
        ),
    ]
)

REPORT_CASES = [
    Case(
        "report-output-is-a-folder",
        ("report", "{w}/results", "-o", "{w}/foreign"),
        ("-o {w}/foreign: names a folder; give the HTML file",),
    ),
    Case(
        "report-output-under-a-file",
        ("report", "{w}/results", "-o", "{w}/afile/r.html"),
        ("-o {w}/afile/r.html: {w}/afile is a file",),
    ),
    Case(
        "report-output-under-proc",
        ("report", "{w}/results", "-o", "/proc/ibray-bad-input.html"),
        ("-o /proc/ibray-bad-input.html: cannot write in /proc (",),
    ),
    Case(
        "report-png-is-a-file",
        ("report", "{w}/results", "-o", "{w}/r.html", "--png", "{w}/afile"),
        ("--png {w}/afile: is a file, not a folder",),
    ),
    Case(
        "report-png-under-a-file",
        ("report", "{w}/results", "--png", "{w}/afile/charts"),
        ("--png {w}/afile/charts: {w}/afile is a file",),
    ),
    Case(
        "report-png-is-the-output",
        ("report", "{w}/results", "-o", "{w}/r.html", "--png", "{w}/r.html"),
        ("--png {w}/r.html: the HTML file goes to {w}/r.html",),
    ),
    Case(
        "report-options-first", ("report", "-o", "{w}/r.html", "{w}/missing"), ("{w}/missing: no such file or folder",)
    ),
    Case(
        "report-results-is-a-file",
        ("report", "{w}/afile"),
        ("{w}/afile: not a folder; pass a trial, sweep or results folder",),
    ),
    Case("report-results-hold-none", ("report", "{w}/foreign"), ("{w}/foreign: no ibray results here",)),
]

CASES = TRIAL_CASES + SWEEP_CASES + REPORT_CASES
END_TO_END = (
    "trial-out-is-a-file",
    "trial-learning-rate-inf",
    "trial-npz-nan",
    "validate-not-utf8",
    "sweep-learning-rate-inf",
    "sweep-data-nan",
    "report-png-is-a-file",
)


def write_bad_data(folder: Path) -> None:
    """One small data file per thing that can be wrong with one (and a good one to pair with)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    y = np.arange(40) % 2
    np.savez(folder / "good.npz", x=x, y=y)
    (folder / "folder.npz").mkdir()
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04 then not a zip archive at all" * 4)
    np.savez(folder / "no_y.npz", x=x, labels=y)
    np.savez(folder / "pickled.npz", x=x, y=np.array([{"label": 0}] * 40, dtype=object))
    nan = x.copy()
    nan[3, 1] = np.nan
    nan[9, 0] = np.inf
    np.savez(folder / "nan.npz", x=nan, y=y)
    np.savez(folder / "lengths.npz", x=x, y=y[:-1])
    fractional = y.astype(float)
    fractional[7] = 0.5
    np.savez(folder / "fractional.npz", x=x, y=fractional)
    np.savez(folder / "negative.npz", x=x, y=y - 1)
    np.savez(folder / "gap.npz", x=x, y=y * 2)
    np.savez(folder / "classes.npz", x=x, y=np.where(np.arange(40) == 0, 5000, y))
    np.savez(folder / "few.npz", x=x, y=np.where(np.arange(40) == 1, 1, 0))
    np.savez(folder / "bad_split.npz", x=x, y=y, split=np.where(np.arange(40) == 5, 2, 1))
    np.savez(folder / "all_train.npz", x=x, y=y, split=np.ones(40, dtype=int))
    (folder / "table.txt").write_text("a,label\n1,0\n")
    (folder / "no_label.csv").write_text("a,b,target\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    (folder / "text_labels.csv").write_text(
        "a,label\n" + "".join(f"{i},{'cat' if i % 2 else 'dog'}\n" for i in range(20))
    )
    (folder / "text_feature.csv").write_text("a,colour,label\n" + "".join(f"{i},red,{i % 2}\n" for i in range(20)))
    (folder / "empty_cell.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{'' if i == 2 else i},{i % 2}\n" for i in range(20))
    )
    (folder / "inf.csv").write_text("a,label\n" + "".join(f"{'inf' if i == 1 else i},{i % 2}\n" for i in range(20)))
    split = "".join(f"{i},{i % 2},{'validation' if i == 1 else 'train' if i < 15 else 'test'}\n" for i in range(20))
    (folder / "bad_split.csv").write_text("a,label,split\n" + split)
    (folder / "corrupt.csv").write_text('a,label\n1,0\n"2,1\n3,0,7,7\n')
    (folder / "corrupt.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A working directory holding what the cases point at: a file, a folder of other files,
    an empty data folder, a corrupt var_u.mat, a real (small) results folder and data files
    of every kind of fault."""
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("someone else's\n")
    (tmp_path / "nodata").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "var_u.mat").write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" * 3)
    write_trial(tmp_path / "results" / "t0", *curves([0], epochs=3, layers=2))
    write_bad_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # default outputs (report.html, results/) would land here
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below root with its bytes (None for a folder)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def prepare(case: Case, w: Path) -> dict[str, bytes | None]:
    if case.sweep_file is not None:
        data = case.sweep_file if isinstance(case.sweep_file, bytes) else case.sweep_file.encode()
        (w / "s.yaml").write_bytes(data)
    return snapshot(w)


def check(case: Case, w: Path, before: dict, code: int, out: str, err: str) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(case.prefix), err
    for part in case.parts(w):
        assert part in lines[0]
    assert snapshot(w) == before
    assert not Path("/proc/ibray-bad-input").exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_fails_cleanly(case, workspace, capsys):
    before = prepare(case, workspace)
    code = main(case.args(workspace))
    captured = capsys.readouterr()
    check(case, workspace, before, code, captured.out, captured.err)


@pytest.mark.parametrize("case", [c for c in CASES if c.id in END_TO_END], ids=lambda c: c.id)
def test_the_real_command_fails_cleanly(case, workspace):
    before = prepare(case, workspace)
    result = subprocess.run([IBRAY, *case.args(workspace)], cwd=workspace, capture_output=True, text=True, timeout=120)
    check(case, workspace, before, result.returncode, result.stdout, result.stderr)


def test_report_takes_help_and_options_in_any_order(workspace):
    shown = subprocess.run([IBRAY, "report", "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith(
        "usage: ibray report [-h] [-o OUTPUT] [--png DIR] [--svg DIR] [--watch SECONDS]"
    )
    for args in (["-o", "first.html", "results"], ["results", "-o", "last.html"]):
        assert main(["report", *args]) == 0
        assert (workspace / args[1 if args[0] == "-o" else 2]).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_every_case_is_distinct():
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids) and set(END_TO_END) <= set(ids)
