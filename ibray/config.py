"""The trial configuration: one frozen dataclass, its defaults (with units) and its checks.

A trial is one point of a sweep's grid: one data set, architecture, activation and bit width,
trained for a block of seeds at once. Every name here is also a sweep-file key, a Tune config
key and (for the axes) a Parquet column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass

DATASETS = ("synthetic12", "szt", "mnist")
# architecture -> the data-set family it fits ("synthetic": 12 binary inputs, "mnist": images)
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
BIN_BOUNDS = ("global", "layer", "fixed")
FLOAT_BITS = 32  # bits == 32 means the plain float32 network
MIN_BITS, MAX_BITS = 2, 16
# More seeds than any study needs; it stops a typo ('0-1000000000') from filling the memory
# before anything could say what is wrong.
MAX_SEEDS = 1_000_000
# The only fields validate() checks against one another; a sweep checks every other field
# once per value and only these across its grid.
TIED_FIELDS = ("dataset", "architecture", "epochs", "prefit_epochs")
_BINNING = re.compile(r"^bin(\d+)$")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message says which and what is allowed."""


def binning_bins(estimator: str) -> int | None:
    """The number of bins of a binning estimator name such as 'bin30'; None for 'exact'."""
    match = _BINNING.match(estimator)
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


@dataclass(frozen=True)
class TrialConfig:
    dataset: str = "synthetic12"  # data set name, one of DATASETS
    architecture: str = "syn"  # network name, one of ARCHITECTURES
    activation: str = "tanh"  # hidden-layer activation, one of ACTIVATIONS
    bits: int = 8  # quantization bits per neuron, 2..16, or 32 for the float32 network
    seeds: tuple[int, ...] = (0,)  # repetitions trained together as one batched model
    estimators: tuple[str, ...] = ("exact",)  # 'exact' and/or 'bin<n>' (e.g. bin30)
    epochs: int = 100  # training epochs on the true labels
    prefit_epochs: int = 0  # epochs on shuffled training labels before training (appendix D)
    learning_rate: float = 1e-4  # Adam step size
    batch_size: int = 256  # samples per mini-batch
    mi_every: int = 1  # epochs between MI and accuracy measurements
    init: str = "truncated_normal"  # weights: truncated normal, std 1/sqrt(width); or glorot
    range_tracking: str = "epoch"  # quantizer range: min/max over the epoch, EMA, or batch
    ema_decay: float = 0.999  # decay of the moving-average range (range_tracking=moving_average)
    bin_bounds: str = "global"  # binning range: per run (global), per layer and epoch, fixed
    bin_range: tuple[float, float] = (-1.0, 1.0)  # the range when bin_bounds == 'fixed'
    min_train_acc: float = 0.55  # a seed below this training accuracy at restart_epoch reruns
    restart_epoch: int = 1000  # training epoch at which dead seeds are detected
    max_restarts: int = 10  # give up on a seed after this many restarts
    train_fraction: float = 0.8  # synthetic sets: stratified train share (MNIST: 60k/10k)
    split_seed: int = 0  # seed of the synthetic train/test split (fixed for a study)
    write_every: int = 50  # epochs between Parquet writes (and checkpoints, in sweeps)
    device: str = "auto"  # 'auto' (CUDA when present), 'cpu' or 'cuda'

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        object.__setattr__(self, "estimators", tuple(self.estimators))
        bin_range = tuple(self.bin_range)
        if all(_is_number(v) for v in bin_range):
            bin_range = tuple(float(v) for v in bin_range)
        object.__setattr__(self, "bin_range", bin_range)
        self.validate()

    def validate(self) -> None:
        def one_of(key: str, value, allowed) -> None:
            if value not in allowed:
                raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")

        one_of("dataset", self.dataset, DATASETS)
        one_of("architecture", self.architecture, tuple(ARCHITECTURES))
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("init", self.init, INITS)
        one_of("range_tracking", self.range_tracking, RANGE_TRACKING)
        one_of("bin_bounds", self.bin_bounds, BIN_BOUNDS)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (
            MIN_BITS <= self.bits <= MAX_BITS or self.bits == FLOAT_BITS
        ):
            raise ConfigError(f"bits: {self.bits!r} is not allowed; use {MIN_BITS}..{MAX_BITS}, or 32 for float32")
        family = ARCHITECTURES[self.architecture]
        if DATASET_FAMILY[self.dataset] != family:
            fits = [a for a, f in ARCHITECTURES.items() if f == DATASET_FAMILY[self.dataset]]
            raise ConfigError(
                f"architecture: {self.architecture!r} does not fit dataset {self.dataset!r}; "
                f"for {self.dataset} use {', '.join(fits)}"
            )
        if not self.estimators:
            raise ConfigError("estimators: give at least one, e.g. exact or bin30")
        for estimator in self.estimators:
            bins = binning_bins(estimator) if isinstance(estimator, str) else None
            if estimator != "exact" and (bins is None or bins < 2):
                raise ConfigError(f"estimators: unknown estimator {estimator!r}; allowed: exact, bin<n> with n >= 2 (e.g. bin30)")
        if len(set(self.estimators)) != len(self.estimators):
            raise ConfigError(f"estimators: {list(self.estimators)} lists an estimator twice")
        for key in ("epochs", "prefit_epochs", "restart_epoch", "max_restarts", "split_seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key}: {value!r} must be a non-negative integer")
        for key in ("batch_size", "mi_every", "write_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: {value!r} must be a positive integer")
        if self.epochs + self.prefit_epochs < 1:
            raise ConfigError("epochs: train for at least one epoch (epochs + prefit_epochs >= 1)")
        for key, (inside, allowed) in NUMBER_RULES.items():
            value = getattr(self, key)
            if not (_is_number(value) and math.isfinite(value) and inside(value)):
                raise ConfigError(f"{key}: {value!r} is not allowed; give {allowed}")
        low_high = len(self.bin_range) == 2 and all(_is_number(v) and math.isfinite(v) for v in self.bin_range)
        if not (low_high and self.bin_range[0] < self.bin_range[1]):
            raise ConfigError(f"bin_range: {list(self.bin_range)!r} is not allowed; give [low, high], two finite numbers with low < high")
        one_of("device", self.device, ("auto", "cpu", "cuda"))

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
        values["bin_range"] = list(self.bin_range)
        return values

    def trial_id(self) -> str:
        """A short, stable name for this configuration (all fields but device and write_every)."""
        values = self.to_dict()
        for key in ("device", "write_every"):
            values.pop(key)
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.architecture}-{self.activation}-{self.bits}b-{digest}"

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS


# Every float field: what it must satisfy, and the words that say so. A test keeps this in step
# with the fields, so a new float field cannot go unchecked (inf and nan fail every rule).
NUMBER_RULES = {
    "learning_rate": (lambda v: v > 0, "a finite number > 0 (Adam's step size, e.g. 1e-4)"),
    "ema_decay": (lambda v: 0 < v < 1, "a number strictly between 0 and 1 (e.g. 0.999)"),
    "min_train_acc": (lambda v: 0 <= v <= 1, "an accuracy in [0, 1] (e.g. 0.55)"),
    "train_fraction": (lambda v: 0 < v < 1, "a number strictly between 0 and 1 (e.g. 0.8)"),
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def default_for(key: str):
    return next(f for f in dataclasses.fields(TrialConfig) if f.name == key).default


__all__ = ["TrialConfig", "ConfigError", "parse_seeds", "binning_bins"]
