"""The trial configuration: one frozen dataclass, its defaults (with units) and its checks.

A trial is one point of a sweep's grid: one data set, architecture, activation and bit width,
trained for a block of seeds at once. Every name here is also a sweep-file key, a Tune config
key and (for the axes) a Parquet column. A data file named as `dataset` is named by the
grammar of ibray.data_names and pinned by ibray.data (this module reads no file); the
per-field checks make it longer than most (about 400 lines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass

from ibray.data_names import (
    DATA_FILE_TYPES,
    DATASETS,
    DEFAULT_LABEL_COLUMN,
    DataFile,
    data_file,
    dataset_label,
)
from ibray.errors import ConfigError
from ibray.module_names import MODULE_GRAMMAR, ModuleRef, module_ref

# architecture -> the built-in data-set family it fits ("synthetic": 12 binary inputs, "mnist":
# images). Dense networks of any shape are named by their hidden widths ('10-7-5-4-3') and fit
# every data set; conv needs images: of the built-in sets mnist, and any data file of images
# (checked by check_sample_shape once the file is read: this module reads no file).
ARCHITECTURES = {
    "syn": "synthetic",
    "bottleneck2": "mnist",
    "bottleneck4": "mnist",
    "hourglass": "mnist",
    "4x10": "mnist",
    "conv": "mnist",
}
DATASET_FAMILY = {"synthetic12": "synthetic", "szt": "synthetic", "mnist": "mnist"}
ACTIVATIONS = ("tanh", "relu", "sigmoid", "elu", "leaky_relu", "linear")
INITS = ("truncated_normal", "glorot")
RANGE_TRACKING = ("epoch", "moving_average", "batch")
ENGINES = ("eager", "compiled")
BIN_BOUNDS = ("global", "layer", "neuron", "fixed")
FLOAT_BITS = 32  # bits == 32 means the plain float32 network
MIN_BITS, MAX_BITS = 2, 16
# More seeds than any study needs; it stops a typo ('0-1000000000') from filling the memory
# before anything could say what is wrong.
MAX_SEEDS = 1_000_000
# The only fields validate() checks against one another; a sweep checks every other field
# once per value and only these across its grid.
TIED_FIELDS = ("dataset", "architecture", "epochs", "prefit_epochs", "measure", "activation", "init")
_BINNING = re.compile(r"^bin(\d+)$")
_ADAPTIVE_BINNING = re.compile(r"^abin(\d+)$")
# Estimators by name, besides bin<n> (uniform) and abin<n> (equal-frequency) binning; see
# ibray/estimators.py. The sampled ones cost O(N^2) (renyi O(N^3)) and see at most
# estimator_samples samples.
NAMED_ESTIMATORS = ("exact", "kde", "kde_lower", "knn", "edge", "renyi")
SAMPLED_ESTIMATORS = ("kde", "kde_lower", "knn", "renyi")
ESTIMATORS_ALLOWED = (
    "exact, bin<n> with n >= 2 (e.g. bin30), abin<n> with n >= 2 (equal-frequency bins, e.g. abin30), "
    "kde, kde_lower, knn, edge, renyi"
)
# KDE's noise variance per data set when kde_noise_var is None (Saxe et al. 2018): 1e-1 on
# MNIST, 1e-3 on the synthetic sets and on data files.
KDE_NOISE_VAR = {"mnist": 1e-1}
DEFAULT_KDE_NOISE_VAR = 1e-3
# Fields added after results existed: left out of the trial id at their defaults, so that the
# ids of configs made before them stay as they were.
LATER_FIELDS = ("kde_noise_var", "knn_k", "estimator_samples", "measure")
# An own module's activation modules, measured when `measure` names no layers: torch.nn's
# class names (ibray.own_module finds them by these names, so the config need not import torch).
DEFAULT_MEASURED = ("ReLU", "Tanh", "Sigmoid", "ELU", "LeakyReLU")

# Bounds on a custom dense network. The exact MI holds for any width (mutual_information packs
# codes into 63-bit words and replaces a full word by its rank), so these are not about
# exactness but about what a measurement holds: every layer's codes of every sample for every
# seed at once (1024 neurons x 70,000 samples x 50 seeds is already 3.6e9 codes), and each
# seed's weights with Adam's two moments. The study's networks are at most 16 wide.
MAX_WIDTH = 1024  # neurons per hidden layer
MAX_HIDDEN_LAYERS = 32
MAX_HIDDEN_WEIGHTS = 2**20  # weights between consecutive hidden layers, summed (per seed)
_WIDTHS = re.compile(r"^\d+(-\d+)*$")


def custom_widths(architecture: str) -> tuple[int, ...]:
    """The hidden widths of a custom dense architecture such as '10-7-5-4-3', checked against
    the bounds above; raises ConfigError naming the problem."""
    if not isinstance(architecture, str) or not _WIDTHS.match(architecture):
        named = ", ".join(ARCHITECTURES)
        raise ConfigError(
            f"architecture: unknown value {architecture!r}; allowed: {named}, or hidden widths joined by '-' "
            f"such as 10-7-5-4-3 (the softmax output is added), or your own module as {MODULE_GRAMMAR}"
        )
    widths = tuple(int(part) for part in architecture.split("-"))
    canonical = "-".join(map(str, widths))
    if canonical != architecture:
        raise ConfigError(f"architecture: {architecture!r} has widths with leading zeros; write it as {canonical}")
    if min(widths) < 1:
        raise ConfigError(
            f"architecture: {architecture!r} has a layer of width 0; every width must be at least 1 (e.g. 8-4-2)"
        )
    if max(widths) > MAX_WIDTH:
        raise ConfigError(
            f"architecture: {architecture!r} has a layer of {max(widths):,} neurons; at most {MAX_WIDTH:,} per layer "
            f"(each measurement holds every sample's codes of every seed at once)"
        )
    if len(widths) > MAX_HIDDEN_LAYERS:
        raise ConfigError(
            f"architecture: {architecture!r} has {len(widths)} hidden layers; at most {MAX_HIDDEN_LAYERS}"
        )
    weights = sum(a * b for a, b in zip(widths, widths[1:]))
    if weights > MAX_HIDDEN_WEIGHTS:
        raise ConfigError(
            f"architecture: {architecture!r} has {weights:,} weights between hidden layers; at most "
            f"{MAX_HIDDEN_WEIGHTS:,} (every seed keeps its weights and Adam's two moments in memory); use narrower layers"
        )
    return widths


# The study's dense networks by name: hidden-layer widths (the softmax output comes on top);
# conv's layers are described in ibray.models. Any other dense network is named by its widths.
DENSE_WIDTHS = {
    "syn": (10, 7, 5, 4, 3),
    "bottleneck2": (16, 8, 4, 2),
    "bottleneck4": (16, 12, 8, 4),
    "hourglass": (16, 8, 4, 2, 4, 8),
    "4x10": (10, 10, 10, 10),
}
CONV_HIDDEN_LAYERS = 3  # conv: two convolutions (each pooled) and a dense layer


# conv's smallest image side: two 3x3 convolutions, each followed by 2x2 pooling, leave
# ((side - 2) // 2 - 2) // 2 pixels, at least one from 10 on.
CONV_MIN_SIDE = 10


def check_sample_shape(architecture: str, dataset: str, sample_shape: tuple[int, ...]) -> None:
    """The pairing rules that need the data's shape, known once the data set is read: conv takes
    images (sample_shape (height, width) or (channels, height, width)) of at least CONV_MIN_SIDE
    pixels a side, not feature rows (features,). Raises ConfigError naming the data and its shape."""
    if architecture != "conv":
        return
    shown = dataset_label(dataset) if data_file(dataset) is not None else dataset
    others = (
        "use a dense network (" + ", ".join(a for a in ARCHITECTURES if a != "conv") + ", or widths such as 16-8-4)"
    )
    if len(sample_shape) < 2:
        raise ConfigError(
            f"architecture: 'conv' needs images, but {shown} holds feature rows (x of shape (samples, {sample_shape[0]})); "
            f"save x as (samples, height, width) or (samples, channels, height, width), or {others}"
        )
    height, width = sample_shape[-2:]
    if min(height, width) < CONV_MIN_SIDE:
        raise ConfigError(
            f"architecture: 'conv' needs images of at least {CONV_MIN_SIDE}x{CONV_MIN_SIDE} pixels (two 3x3 "
            f"convolutions, each 2x2-pooled), but {shown} holds images of shape {tuple(sample_shape)}; "
            f"{others}, or your own module"
        )


def hidden_widths(architecture: str) -> tuple[int, ...]:
    """Hidden widths of a dense network: a named one of the study's, or '10-7-5-4-3' alike."""
    return DENSE_WIDTHS[architecture] if architecture in DENSE_WIDTHS else custom_widths(architecture)


def layer_count(architecture: str, measure: tuple[str, ...] = ()) -> int | None:
    """Layers whose output T is measured: the hidden layers (an own module's `measure` layers)
    and the softmax output; None for an own module whose measured layers are its activation
    modules (known once the module is built: trial.json's `layers` lists them)."""
    if own_module(architecture) is not None:
        return len(measure) + 1 if measure else None
    hidden = CONV_HIDDEN_LAYERS if architecture == "conv" else len(hidden_widths(architecture))
    return hidden + 1


def own_module(architecture) -> ModuleRef | None:
    """The own module an architecture value names ('nets.py:lenet5', 'pkg.nets:lenet5'), or
    None for the study's names and dense widths; raises ConfigError for a malformed one."""
    try:
        return module_ref(architecture)
    except ValueError as error:
        raise ConfigError(f"architecture: {architecture!r}: {error}") from None


def binning_bins(estimator: str) -> int | None:
    """The number of bins of a binning estimator name such as 'bin30'; None for 'exact'."""
    match = _BINNING.match(estimator)
    return int(match.group(1)) if match else None


def adaptive_bins(estimator: str) -> int | None:
    """The number of bins of an equal-frequency binning name such as 'abin30'; None otherwise."""
    match = _ADAPTIVE_BINNING.match(estimator) if isinstance(estimator, str) else None
    return int(match.group(1)) if match else None


def parse_seeds(text: str | int | list | tuple) -> tuple[int, ...]:
    """'0-9', '0,3,5-7', 7 or [1, 2] -> a tuple of seeds, in order, duplicates refused."""
    if isinstance(text, int) and not isinstance(text, bool):
        seeds = [text]
    elif isinstance(text, (list, tuple)):
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in text):
            raise ConfigError(f"seeds: {list(text)!r} holds something other than integer seeds")
        seeds = list(text)
    else:
        seeds = []
        for part in str(text).split(","):
            part = part.strip()
            if re.fullmatch(r"\d+", part):
                seeds.append(int(part))
            elif re.fullmatch(r"\d+-\d+", part):
                lo, hi = (int(p) for p in part.split("-"))
                if hi < lo:
                    raise ConfigError(f"seeds: range {part!r} runs backwards; write it low-high, e.g. 0-9")
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:
                    raise ConfigError(f"seeds: {text!r} gives more than {MAX_SEEDS:,} seeds; give fewer")
                seeds.extend(range(lo, hi + 1))
            else:
                raise ConfigError(f"seeds: {part!r} is not a seed; use e.g. 0-9 or 0,3,5-7")
    if not seeds:
        raise ConfigError("seeds: no seeds given; use e.g. 0-9")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"seeds: {len(seeds):,} seeds; give at most {MAX_SEEDS:,}")
    duplicates = sorted(s for s, count in Counter(seeds).items() if count > 1)
    if duplicates:
        raise ConfigError(f"seeds: {duplicates} appear more than once; each seed must be unique")
    if any(s < 0 for s in seeds):
        raise ConfigError("seeds: seeds must be non-negative integers")
    return tuple(seeds)


def described(default, meaning: str):
    """A config field with its default and its meaning (with units), which `ibray trial --help`
    shows: one place, so the flags' help cannot drift from the config."""
    return dataclasses.field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class TrialConfig:
    """One trial. A data file given as `dataset` becomes its absolute path (relative paths are
    taken from the working directory) with its label column when not 'label'. Pinning it, the
    SHA-256 of its bytes appended ('/home/me/my.csv#target@<64 hex digits>'), is a separate,
    explicit step that reads the file (`ibray.data.pin_dataset`, taken by the sweep loader and
    `ibray trial`): the config reads no file. A pinned value is taken as it is, and loading it
    checks the hash; only a config whose file is pinned has a trial id."""

    dataset: str = described(
        "synthetic12", "synthetic12 (offline), szt, mnist, or a .npz (x, y) / .parquet / .csv file"
    )
    architecture: str = described(
        "syn",
        "one of ARCHITECTURES, hidden widths such as '10-7-5-4-3', or your own torch.nn.Module as path/to/nets.py:factory or package.module:factory",
    )
    measure: tuple[str, ...] = described(
        (),
        "own modules: the submodules whose outputs T are measured, as named_modules() names them (e.g. conv1,fc1); none given: every activation module (ReLU, Tanh, Sigmoid, ELU, LeakyReLU)",
    )
    activation: str = described("tanh", "hidden-layer activation, one of ACTIVATIONS")
    bits: int = described(8, "quantization bits per neuron, 2..16, or 32 for the float32 network")
    seeds: tuple[int, ...] = described((0,), "repetitions trained together as one batched model, e.g. 0-9 or 0,3,5-7")
    estimators: tuple[str, ...] = described(
        ("exact",),
        "any of exact, bin<n> (e.g. bin30), abin<n> (bins of equal counts), kde, kde_lower, knn, edge, renyi (matrix-based Renyi entropy)",
    )
    epochs: int = described(100, "training epochs on the true labels")
    prefit_epochs: int = described(0, "epochs on shuffled training labels before training (appendix D)")
    learning_rate: float = described(1e-4, "Adam step size")
    batch_size: int = described(256, "samples per mini-batch")
    mi_every: int = described(1, "epochs between MI and accuracy measurements")
    init: str = described("truncated_normal", "weights: truncated normal, std 1/sqrt(width); or glorot")
    range_tracking: str = described("epoch", "quantizer range: min/max over the epoch, EMA, or batch")
    ema_decay: float = described(0.999, "decay of the moving-average range (range_tracking=moving_average)")
    bin_bounds: str = described(
        "global",
        "bin<n>'s range: per run over all layers and epochs (global), per layer and epoch (layer), per neuron, layer and epoch (neuron: each neuron's bins over its own min/max), or bin_range (fixed)",
    )
    bin_range: tuple[float, float] = described((-1.0, 1.0), "the range when bin_bounds == 'fixed'")
    kde_noise_var: float | None = described(
        None,
        "kde, kde_lower: noise variance s2 in squared activation units; None: 1e-1 on mnist, 1e-3 otherwise (Saxe et al.)",
    )
    knn_k: int = described(3, "knn: neighbours k")
    estimator_samples: int = described(
        4096, "kde, kde_lower, knn, renyi: at most this many samples (one fixed random subset; all when fewer)"
    )
    min_train_acc: float = described(0.55, "a seed below this training accuracy at restart_epoch reruns")
    restart_epoch: int = described(1000, "training epoch at which dead seeds are detected")
    max_restarts: int = described(10, "give up on a seed after this many restarts")
    train_fraction: float = described(0.8, "synthetic sets and files: stratified train share (MNIST: 60k/10k)")
    split_seed: int = described(0, "seed of the stratified train/test split (fixed for a study)")
    label_column: str = described(DEFAULT_LABEL_COLUMN, ".csv/.parquet files: the labels' column (others ignore it)")
    write_every: int = described(50, "epochs between Parquet writes (and checkpoints, in sweeps)")
    device: str = described("auto", "'auto' (CUDA when present), 'cpu' or 'cuda'")
    engine: str = described(
        "eager",
        "'eager' (op by op) or 'compiled' (dense nets: training step through torch.compile, faster after a compilation of ~15 s per batch shape; needs a C++ compiler; other last bits)",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        object.__setattr__(self, "estimators", tuple(self.estimators))
        if isinstance(self.measure, (list, tuple)):
            object.__setattr__(self, "measure", tuple(self.measure))
        module = own_module(self.architecture)
        if module is not None and module.is_file:  # an absolute path, as a data file's
            path = os.path.abspath(os.path.expanduser(module.source))
            object.__setattr__(self, "architecture", ModuleRef(path, module.factory, module.sha256).value())
        bin_range = tuple(self.bin_range)
        if all(_is_number(v) for v in bin_range):
            bin_range = tuple(float(v) for v in bin_range)
        object.__setattr__(self, "bin_range", bin_range)
        file = data_file(self.dataset)
        if file is not None:
            object.__setattr__(self, "dataset", self._normalised(file))
        self.validate()

    def _normalised(self, file: DataFile) -> str:
        """The value with an absolute path and the label column folded in (before checks)."""
        path = os.path.abspath(os.path.expanduser(file.path))
        if file.label_column is not None and file.label_column != self.label_column:
            raise ConfigError(
                f"dataset: {self.dataset!r} names label column {file.label_column!r} but label_column is "
                f"{self.label_column!r}; give the path alone and set label_column: {file.label_column}"
            )
        column = DataFile(path, None, None).column_suffix(self.label_column)
        return f"{path}{column}@{file.sha256}" if file.sha256 else f"{path}{column}"

    def validate(self) -> None:
        def one_of(key: str, value, allowed) -> None:
            if value not in allowed:
                raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")

        file = data_file(self.dataset)
        if file is None and self.dataset not in DATASETS:
            raise ConfigError(
                f"dataset: unknown value {self.dataset!r}; allowed: {', '.join(DATASETS)}, or a data file "
                f"({', '.join(DATA_FILE_TYPES)})"
            )
        if file is not None and file.suffix not in DATA_FILE_TYPES:
            kind = f"of unknown type {file.suffix!r}" if file.suffix else "without a file type"
            raise ConfigError(
                f"dataset: {file.path!r} is a file {kind}; give a .npz file (arrays x and y), or a .parquet "
                f"or .csv file (feature columns and a label column)"
            )
        # Other data sets ignore label_column, so one sweep may pair a .csv's with a .npz.
        if not isinstance(self.label_column, str) or not self.label_column or set(self.label_column) & set("#@"):
            raise ConfigError(
                f"label_column: {self.label_column!r} is not allowed; give a column name without '#' or '@' (default 'label')"
            )
        module = own_module(self.architecture)
        if self.architecture not in ARCHITECTURES and module is None:
            custom_widths(self.architecture)
        self._validate_own_module(module)
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("init", self.init, INITS)
        one_of("range_tracking", self.range_tracking, RANGE_TRACKING)
        one_of("bin_bounds", self.bin_bounds, BIN_BOUNDS)
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not (MIN_BITS <= self.bits <= MAX_BITS or self.bits == FLOAT_BITS)
        ):
            raise ConfigError(f"bits: {self.bits!r} is not allowed; use {MIN_BITS}..{MAX_BITS}, or 32 for float32")
        family = ARCHITECTURES.get(self.architecture)  # None: a custom dense network or an own module, fits all
        # (a data file fits every architecture here; conv's need of images is check_sample_shape's)
        if file is None and family is not None and DATASET_FAMILY[self.dataset] != family:
            fits = [a for a, f in ARCHITECTURES.items() if f == DATASET_FAMILY[self.dataset]]
            raise ConfigError(
                f"architecture: {self.architecture!r} does not fit dataset {self.dataset!r}; "
                f"for {self.dataset} use {', '.join(fits)}, or hidden widths such as 16-8-4"
            )
        if not self.estimators:
            raise ConfigError("estimators: give at least one, e.g. exact or bin30")
        for estimator in self.estimators:
            bins = binning_bins(estimator) if isinstance(estimator, str) else None
            bins = bins if bins is not None else adaptive_bins(estimator)
            if estimator not in NAMED_ESTIMATORS and (bins is None or bins < 2):
                raise ConfigError(f"estimators: unknown estimator {estimator!r}; allowed: {ESTIMATORS_ALLOWED}")
        if len(set(self.estimators)) != len(self.estimators):
            raise ConfigError(f"estimators: {list(self.estimators)} lists an estimator twice")
        for key in ("epochs", "prefit_epochs", "restart_epoch", "max_restarts", "split_seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key}: {value!r} must be a non-negative integer")
        for key in ("batch_size", "mi_every", "write_every", "knn_k"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: {value!r} must be a positive integer")
        samples = self.estimator_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ConfigError(f"estimator_samples: {samples!r} is not allowed; give an integer >= 2 (e.g. 4096)")
        noise = self.kde_noise_var
        if noise is not None and not (_is_number(noise) and math.isfinite(noise) and noise > 0):
            raise ConfigError(
                f"kde_noise_var: {noise!r} is not allowed; give a finite number > 0 (a variance, e.g. 1e-3), "
                f"or leave it out for the data set's (1e-1 on mnist, 1e-3 otherwise)"
            )
        if self.epochs + self.prefit_epochs < 1:
            raise ConfigError("epochs: train for at least one epoch (epochs + prefit_epochs >= 1)")
        for key, (inside, allowed) in NUMBER_RULES.items():
            value = getattr(self, key)
            if not (_is_number(value) and math.isfinite(value) and inside(value)):
                raise ConfigError(f"{key}: {value!r} is not allowed; give {allowed}")
        low_high = len(self.bin_range) == 2 and all(_is_number(v) and math.isfinite(v) for v in self.bin_range)
        if not (low_high and self.bin_range[0] < self.bin_range[1]):
            raise ConfigError(
                f"bin_range: {list(self.bin_range)!r} is not allowed; give [low, high], two finite numbers with low < high"
            )
        one_of("device", self.device, ("auto", "cpu", "cuda"))
        one_of("engine", self.engine, ENGINES)

    def _validate_own_module(self, module: ModuleRef | None) -> None:
        """`measure` names layers of an own module only; an own module brings its own
        activations and initialisation, so activation and init keep their defaults."""
        names = self.measure
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"measure: {names!r} is not allowed; give submodule names, e.g. [conv1, fc1]")
        if len(set(names)) != len(names):
            raise ConfigError(f"measure: {list(names)} names a layer twice")
        if "output" in names:
            raise ConfigError(
                "measure: 'output' is the name of the softmax layer ibray measures anyway; rename that submodule"
            )
        if module is None:
            if names:
                raise ConfigError(
                    f"measure: {list(names)} names layers of your own module, but architecture {self.architecture!r} is "
                    f"built in; leave measure out, or give architecture as {MODULE_GRAMMAR}"
                )
            return
        for key in ("activation", "init"):
            if getattr(self, key) != default_for(key):
                raise ConfigError(
                    f"{key}: {getattr(self, key)!r} does not apply to your own module {module.label()} (it has its own "
                    f"activations and initialisation); leave {key} out"
                )
        if self.engine != "eager":
            raise ConfigError(
                f"engine: {self.engine!r} is for the built-in dense networks; your own module trains eagerly, leave engine out"
            )

    @classmethod
    def from_dict(cls, values: dict) -> "TrialConfig":
        """Build from a flat dict (a sweep point, a Tune config); unknown keys fail at once."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["seeds"] = list(self.seeds)
        values["estimators"] = list(self.estimators)
        values["measure"] = list(self.measure)
        values["bin_range"] = list(self.bin_range)
        return values

    def trial_id(self) -> str:
        """A short, stable name for this configuration (all fields but device and write_every;
        the engine only when compiled: its numbers differ from eager's in the last bits).

        label_column stays out of the digest: a pinned file's value already holds it, and a
        built-in set has none, so the ids of configs made before it existed stay as they were.
        The estimators' parameters (LATER_FIELDS) enter it only where they depart from their
        defaults, for the same reason.
        """
        file = data_file(self.dataset)
        if file is not None and file.sha256 is None:
            raise ConfigError(
                f"dataset: {self.dataset!r} is not pinned, so the trial has no id yet; pin it first "
                f"(ibray.data.pin_dataset reads the file and appends its SHA-256)"
            )
        values = self.to_dict()
        for key in ("device", "write_every", "label_column"):
            values.pop(key)
        if values["engine"] == "eager":  # the ids of configs made before the engine existed stay
            values.pop("engine")
        for key in LATER_FIELDS:
            if getattr(self, key) == default_for(key):
                values.pop(key)
        module = own_module(self.architecture)
        if module is not None and module.sha256 is None:
            raise ConfigError(
                f"architecture: {self.architecture!r} is not pinned, so the trial has no id yet; pin it first "
                f"(ibray.module_pin.pin_module reads the file and appends its SHA-256)"
            )
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
        # a file's path may hold anything; its label keeps only what any filesystem takes
        name = _filesystem_name(self.dataset_label)
        if module is not None:  # its own activations: none to name
            return f"{name}-{_filesystem_name(module.label())}-{self.bits}b-{digest}"
        return f"{name}-{self.architecture}-{self.activation}-{self.bits}b-{digest}"

    @property
    def architecture_label(self) -> str:
        """The architecture as reports name it: itself, or 'nets.py:lenet5@1a2b3c4d' for an own module."""
        module = own_module(self.architecture)
        return self.architecture if module is None else module.label()

    @property
    def activation_label(self) -> str:
        """The activation as rows name it: itself, or 'module' for an own module (its own)."""
        return "module" if own_module(self.architecture) is not None else self.activation

    @property
    def dataset_label(self) -> str:
        """The data set as reports name it: 'synthetic12', or 'my.npz@1a2b3c4d' for a file."""
        return dataset_label(self.dataset, self.label_column)

    @property
    def kde_variance(self) -> float:
        """KDE's noise variance s2: kde_noise_var, or the data set's (KDE_NOISE_VAR)."""
        if self.kde_noise_var is not None:
            return float(self.kde_noise_var)
        return KDE_NOISE_VAR.get(self.dataset, DEFAULT_KDE_NOISE_VAR)

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS

    def phase_epoch(self, done: int) -> tuple[str, int]:
        """(phase, epoch within the phase) after `done` completed epochs, prefit included:
        the names of the Parquet `phase` and `epoch` columns."""
        if self.prefit_epochs and done <= self.prefit_epochs:
            return "prefit", done
        return "train", done - self.prefit_epochs

    def measured_at(self, done: int) -> bool:
        """Is a seed measured after `done` completed epochs? The measuring grid: epoch 0, every
        `mi_every`-th epoch, the end of each phase, and the dead-run check at `restart_epoch`.
        The trainer measures by it and `ibray verify` expects rows by it."""
        return (
            done % self.mi_every == 0
            or done == self.prefit_epochs + self.epochs
            or done == self.prefit_epochs
            or self.phase_epoch(done) == ("train", self.restart_epoch)
        )


# Every float field: what it must satisfy, and the words that say so. A test keeps this in step
# with the fields, so a new float field cannot go unchecked (inf and nan fail every rule).
NUMBER_RULES = {
    "learning_rate": (lambda v: v > 0, "a finite number > 0 (Adam's step size, e.g. 1e-4)"),
    "ema_decay": (lambda v: 0 < v < 1, "a number strictly between 0 and 1 (e.g. 0.999)"),
    "min_train_acc": (lambda v: 0 <= v <= 1, "an accuracy in [0, 1] (e.g. 0.55)"),
    "train_fraction": (lambda v: 0 < v < 1, "a number strictly between 0 and 1 (e.g. 0.8)"),
}


def _filesystem_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[-48:].strip("-.")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def default_for(key: str):
    return next(f for f in dataclasses.fields(TrialConfig) if f.name == key).default


def field_type(key: str) -> type:
    """The type of a field's values: its default's, or for a field whose default is None the
    type its annotation names first (kde_noise_var: 'float | None' -> float)."""
    field = next(f for f in dataclasses.fields(TrialConfig) if f.name == key)
    if field.default is not None:
        return type(field.default)
    return {"float": float, "int": int, "str": str}[str(field.type).split("|")[0].strip()]


def field_help() -> dict[str, str]:
    """Each TrialConfig field's meaning and unit (its `described` metadata), with the lists it
    names spelled out: `ibray trial --help` shows them."""
    named = {"ARCHITECTURES": ARCHITECTURES, "ACTIVATIONS": ACTIVATIONS}
    return {
        field.name: re.sub(
            r"one of ([A-Z]+)\b", lambda m: "one of " + ", ".join(named[m.group(1)]), field.metadata["help"]
        )
        for field in dataclasses.fields(TrialConfig)
    }


__all__ = [
    "TrialConfig",
    "ConfigError",
    "DataFile",
    "parse_seeds",
    "binning_bins",
    "adaptive_bins",
    "data_file",
    "dataset_label",
    "custom_widths",
    "hidden_widths",
    "layer_count",
    "field_type",
    "own_module",
]
