"""Sweep files: load the YAML, validate every key and value, expand to the grid of trials.

A sweep file states only the axes and what departs from TrialConfig's defaults. Keys are
TrialConfig's field names plus a few sweep-level ones (SWEEP_KEYS). A list given for a
single-valued field is an axis; the grid is the product of the axes, and the seeds are cut
into blocks of `seeds_per_trial`, each block one trial (the core trains a block as one
batched model). Every error names the file, the key, the bad value and what is allowed, and
the whole file is checked before anything starts: each axis value once, the few fields that
TrialConfig checks against one another across their combinations, and the grid's size against
`max_trials` and `max_seed_epochs` (so a typo cannot start a million trials).

Longer than most modules (about 500 lines) for one job: a message for every way a sweep file
can be wrong is most of it, and splitting the checks from the file they check would scatter it.

Knows nothing of Ray: `SweepSpec.param_space()` is a plain dict whose axes are marked by
`{"grid_search": values}`, exactly what `tune.grid_search(values)` returns, so the launcher
hands it to Tune as it is.

A data file named by `dataset` (a path, relative ones taken from the working directory) is
read, checked and pinned once, when the file is validated: every trial of the sweep gets the
same value, the file's absolute path and SHA-256 (see TrialConfig), so all of them train on
the same bytes and a trial that finds the file changed is refused. `check_data_unchanged` (in
ibray.sweep_folder, which reads results folders) refuses to go on with a sweep's folder whose
trials were pinned to other bytes.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ibray.config import (
    MAX_SEEDS,
    TIED_FIELDS,
    ConfigError,
    TrialConfig,
    check_sample_shape,
    data_file,
    dataset_label,
    default_for,
    field_type,
    parse_seeds,
)
from ibray.data import DataError, pin_dataset_shape
from ibray.errors import SweepError
from ibray.module_names import ModuleRef, module_ref

# Sweep-level keys (not TrialConfig fields): what each means and its default.
SWEEP_KEYS = {
    "name": "the sweep's name: its folder under the results root (default: the file's stem)",
    "seeds_per_trial": "seeds trained together in one trial (default: all of them)",
    "resources": "per trial: {cpu: CPUs, gpu: GPU fraction} (default {cpu: 1, gpu: 0})",
    "max_failures": "retries of a failed trial from its last checkpoint (default 3)",
    "max_trials": "refuse a grid of more trials than this (default 100,000)",
    "max_seed_epochs": "refuse a grid of more seed-epochs than this (default 1,000,000,000)",
}
TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(TrialConfig))
# Fields whose value is itself a list; a list of them is one value, not an axis.
LIST_FIELDS = ("seeds", "estimators", "bin_range", "measure")
# Fields a data file is read with when it is pinned, so checked before `dataset`. label_column
# is part of a pinned file's value, so it cannot vary beside it: it is never an axis.
DATA_READ_FIELDS = ("label_column", "train_fraction", "split_seed")
RESOURCE_KEYS = ("cpu", "gpu")
DEFAULT_RESOURCES = {"cpu": 1.0, "gpu": 0.0}
DEFAULT_MAX_FAILURES = 3
# Far beyond the study (under 10^3 trials, under 10^8 seed-epochs), yet low enough that a typo
# is refused at once instead of starting a sweep that cannot finish; a file may raise them.
MAX_SWEEP_FILE_BYTES = 1 << 20  # a sweep file is a few dozen lines; larger is a mistake (or an attack)
MAX_YAML_NODES = 100_000  # values a file may hold once its aliases are expanded
MAX_SHOWN_CHARACTERS = (
    1000  # of one problem's line (paths included): longer ones, a long value echoed, are cut in the middle
)
DEFAULT_MAX_TRIALS = 100_000
DEFAULT_MAX_SEED_EPOCHS = 1_000_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NAME_RULE = (
    "ASCII letters (A-Z, a-z), digits, '_', '.' and '-', starting with a letter or digit, at most 100 characters"
)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: its name, the grid's axes and constants, the seed blocks, resources."""

    path: str  # the file it came from (for messages)
    text: str  # the file as given, copied next to the results
    name: str
    constants: dict  # TrialConfig keys held fixed (seeds excluded)
    axes: dict  # TrialConfig key -> list of values, in the file's order
    seed_blocks: tuple  # tuple of seed tuples, one per trial of each grid point
    resources: dict  # {"cpu": float, "gpu": float} per trial
    max_failures: int
    base: str | None = None  # the folder an own module's relative path is taken from (see parse_sweep)

    @functools.cached_property
    def trials(self) -> list[TrialConfig]:
        """Every trial of the grid: axes in file order, then seed blocks (built once)."""
        keys = list(self.axes)
        points = itertools.product(*(self.axes[k] for k in keys), self.seed_blocks)
        return [
            TrialConfig.from_dict({**self.constants, **dict(zip(keys, values[:-1])), "seeds": values[-1]})
            for values in points
        ]

    def first_trial(self) -> TrialConfig:
        first = {key: values[0] for key, values in self.axes.items()}
        return TrialConfig.from_dict({**self.constants, **first, "seeds": self.seed_blocks[0]})

    @property
    def grid_points(self) -> int:
        return math.prod(len(values) for values in self.axes.values())

    @property
    def trial_count(self) -> int:
        return self.grid_points * len(self.seed_blocks)

    @property
    def seeds(self) -> int:
        return sum(len(block) for block in self.seed_blocks)

    @property
    def seed_epochs(self) -> int:
        """Seeds times epochs (prefit included) over the grid, counted without building it: only
        epochs and prefit_epochs vary the count, and every pair of them recurs equally often."""
        epochs, prefit = self._values("epochs"), self._values("prefit_epochs")
        per_pair = self.grid_points // (len(epochs) * len(prefit))
        return self.seeds * per_pair * (len(prefit) * sum(epochs) + len(epochs) * sum(prefit))

    def _values(self, key: str) -> list:
        return self.axes.get(key) or [self.constants.get(key, default_for(key))]

    def param_space(self) -> dict:
        """A flat config with each axis (and the seed blocks) as {'grid_search': values}."""
        space = {key: _plain(value) for key, value in self.constants.items()}
        for key, values in self.axes.items():
            space[key] = {"grid_search": [_plain(v) for v in values]}
        space["seeds"] = {"grid_search": [list(block) for block in self.seed_blocks]}
        return space

    def describe(self) -> str:
        """The grid in a few lines: axes, trials, seeds, seed-epochs, resources."""
        lines = [f"sweep {self.name!r} ({self.path})"]
        for key, values in self.axes.items():
            shown = [dataset_label(v) for v in values] if key == "dataset" else values
            lines.append(f"  axis {key}: {', '.join(map(str, shown))}")
        for value in self._values("dataset"):
            file = data_file(value)
            if file is not None:
                lines.append(f"  data file {dataset_label(value)}: {file.path}, SHA-256 {file.sha256}")
        sizes = sorted({len(b) for b in self.seed_blocks})
        lines.append(
            f"  seeds: {self.seeds} ({_seed_text(self.seed_blocks)}) in {len(self.seed_blocks)} block(s) of "
            f"{'/'.join(map(str, sizes))} per grid point"
        )
        lines.append(f"  trials: {self.trial_count:,}; seed-epochs: {self.seed_epochs:,}")
        first = self.first_trial()
        lines.append(
            f"  per trial: {first.epochs} epochs"
            + (f" after {first.prefit_epochs} prefit epochs" if first.prefit_epochs else "")
            + f", MI every {first.mi_every}, written and checkpointed every {first.write_every}; "
            f"resources cpu {self.resources['cpu']:g}, gpu {self.resources['gpu']:g}; "
            f"max_failures {self.max_failures}"
        )
        return "\n".join(lines)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _seed_text(blocks) -> str:
    seeds = [s for block in blocks for s in block]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; raises SweepError listing every problem found."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():  # a folder, or a device that reads forever
            raise SweepError(f"{path}: not a file; give a sweep file such as sweeps/quickstart.yaml")
        size = path.stat().st_size
        if size > MAX_SWEEP_FILE_BYTES:
            raise SweepError(
                f"{path}: {size:,} bytes is too large for a sweep file (at most {MAX_SWEEP_FILE_BYTES:,}); "
                f"give the axes and what departs from the defaults (see sweeps/quickstart.yaml)"
            )
        data = path.read_bytes()
    except OSError as error:
        raise SweepError(f"{path}: cannot read the sweep file ({error.strerror or error})") from error
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SweepError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); save the sweep file as UTF-8"
        ) from None
    return parse_sweep(text, str(path), default_name=path.stem)


def parse_sweep(text: str, source: str = "<sweep>", default_name: str = "sweep", base: str | None = None) -> SweepSpec:
    """Validate a sweep file's text; `source` names it in messages. An own module's relative
    file path (`architecture: nets.py:lenet`) is taken from `base`, by default the folder of
    `source` when that is a file: pass the original sweep file's folder when parsing a copy of
    it (a sweep folder's sweep.yaml), whose own folder does not hold the module."""
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except _TooLarge as error:
        raise SweepError(f"{source}: {error}; write the values out, with fewer aliases") from None
    except _DuplicateKey as error:
        raise SweepError(
            f"{source}: line {error.line}: key {error.key!r} is given twice (first on line {error.first_line}); keep one"
        ) from None
    except yaml.YAMLError as error:
        raise SweepError(f"{source}: not valid YAML: {_yaml_problem(error, text)}") from None
    if values is None or values == {}:
        raise SweepError(
            f"{source}: the file states nothing; a sweep file is a mapping of keys to values, at least "
            f"its name (e.g. name: my-sweep) and what departs from the defaults (see sweeps/quickstart.yaml)"
        )
    if not isinstance(values, dict):
        raise SweepError(f"{source}: a sweep file is a mapping of keys to values, not a {type(values).__name__}")
    if base is None and os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
    return _Validator(source, values, default_name, base).spec(text)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} on lines {first_line} and {line}")
        self.key, self.first_line, self.line = key, first_line, line


class _TooLarge(yaml.YAMLError):
    pass


def _expanded_size(node, sizes: dict, open_nodes: set) -> int:
    """Values under a composed YAML node with every alias expanded, counted once per node
    (`sizes`), so that nested aliases, which multiply, are counted without expanding them."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _TooLarge("an alias refers to a value that contains it (a value without end)")
    open_nodes.add(key)
    children = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_NODES:
            raise _TooLarge(f"its aliases expand to more than {MAX_YAML_NODES:,} values")
    open_nodes.discard(key)
    sizes[key] = total
    return total


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last, so the first would be silently ignored; and a document whose aliases
    expand beyond MAX_YAML_NODES values is refused before it is built (nine nested aliases of
    nine make 387 million)."""

    def construct_document(self, node):
        _expanded_size(node, {}, set())
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        first_lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_lines:
                    raise _DuplicateKey(key, first_lines[key], line)
                first_lines[key] = line
            except TypeError:  # an unhashable key: the safe loader's own error names it
                pass
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """PyYAML's cause with its line and column (counted from 1), on one line."""
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        character = f"U+{error.character:04X}" if isinstance(error.character, int) else repr(error.character)
        return f"line {line}: character {character} is not allowed ({error.reason})"
    if not isinstance(error, yaml.MarkedYAMLError):
        return " ".join(str(error).split())
    mark, context_mark = error.problem_mark, error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    message = f"{where}{error.problem or error.context}"
    if error.problem and error.context:
        moved = context_mark and (not mark or (context_mark.line, context_mark.column) != (mark.line, mark.column))
        started = f" at line {context_mark.line + 1}, column {context_mark.column + 1}" if moved else ""
        message += f" ({error.context}{started})"
    return " ".join(message.split())


def _readable(line: str) -> str:
    """`line` cut in the middle to MAX_SHOWN_CHARACTERS: a long value echoed in it (a string of
    megabytes) would bury what is wrong and the fix, which stand at its ends."""
    if len(line) <= MAX_SHOWN_CHARACTERS:
        return line
    keep = MAX_SHOWN_CHARACTERS // 2
    return f"{line[:keep]} ... ({len(line) - 2 * keep:,} characters cut) ... {line[-keep:]}"


class _Validator:
    """Collects every problem of a file, then raises them together."""

    def __init__(self, source: str, values: dict, default_name: str, base: str | None) -> None:
        self.source = source
        self.base = base  # the folder relative module paths are taken from (None: the working directory)
        self.values = values
        self.default_name = default_name
        self.errors: list[str] = []
        self.sample_shapes: dict[str, tuple[int, ...]] = {}  # a pinned data file's value -> one sample's shape

    def error(self, key: str, message: str) -> None:
        self.errors.append(_readable(f"{self.source}: {key}: {message}"))

    def spec(self, text: str) -> SweepSpec:
        allowed = set(TRIAL_KEYS) | set(SWEEP_KEYS)
        for key in self.values:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.error(str(key), f"unknown key; {hint}allowed: {', '.join(sorted(allowed))}")

        name = self._name()
        seed_blocks = self._seed_blocks()
        resources = self._resources()
        max_failures = self._count(
            "max_failures", DEFAULT_MAX_FAILURES, -1, "retries per trial >= 0 (-1: retry forever)"
        )
        max_trials = self._count("max_trials", DEFAULT_MAX_TRIALS, 1, "a positive integer")
        max_seed_epochs = self._count("max_seed_epochs", DEFAULT_MAX_SEED_EPOCHS, 1, "a positive integer")
        self.constants, self.axes = {}, {}
        # dataset last: pinning a data file reads it with the fields it depends on
        for key in sorted(TRIAL_KEYS, key=lambda k: k == "dataset"):
            if key == "seeds" or key not in self.values:
                continue
            value = self.values[key]
            is_axis = _is_list_of_lists(value) if key in LIST_FIELDS else isinstance(value, list)
            if is_axis and key == "label_column":
                self.error(
                    key, f"{value!r}: a list is not allowed here; give one value (one sweep per value to compare them)"
                )
            elif is_axis:
                axis = self._axis(key, value)
                if axis is not None:
                    self.axes[key] = axis
            else:
                checked = self._value(key, value)
                if checked is not _BAD:
                    self.constants[key] = checked
        if self.errors:
            raise SweepError("\n".join(self.errors))
        constants = {k: self.constants[k] for k in TRIAL_KEYS if k in self.constants}
        axes = {k: self.axes[k] for k in TRIAL_KEYS if k in self.axes}
        spec = SweepSpec(
            path=self.source,
            text=text,
            name=name,
            constants=constants,
            axes=axes,
            seed_blocks=seed_blocks,
            resources=resources,
            max_failures=max_failures,
            base=self.base,
        )
        self._check_size(spec, max_trials, max_seed_epochs)
        self._check_grid(spec)
        return spec

    # -- single keys ------------------------------------------------------------------------
    def _name(self) -> str:
        name = self.values.get("name", self.default_name)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            given = "" if "name" in self.values else " (the file's stem, as no name: is given)"
            self.error("name", f"{name!r}{given} is not a usable folder name; use {NAME_RULE}")
            return "invalid"
        return name

    def _seed_blocks(self) -> tuple:
        raw = self.values.get("seeds", 1)
        if isinstance(raw, bool):
            self.error(
                "seeds", f"{raw!r} is not allowed; give a count (e.g. 20), a list (e.g. [0, 3, 7]) or a range ('0-19')"
            )
            return ((0,),)
        try:
            if isinstance(raw, int):
                if not 1 <= raw <= MAX_SEEDS:
                    raise ConfigError(f"seeds: a count of {raw:,} seeds; give at least 1 and at most {MAX_SEEDS:,}")
                seeds = tuple(range(raw))
            else:
                seeds = parse_seeds(raw)
        except ConfigError as error:
            self.error(
                "seeds",
                f"{_strip_key(error, 'seeds')} (value {raw!r}); allowed: a count, a list of distinct seeds, or ranges like '0-9,20'",
            )
            return ((0,),)
        per_trial = self.values.get("seeds_per_trial", len(seeds))
        if isinstance(per_trial, bool) or not isinstance(per_trial, int) or per_trial < 1:
            self.error("seeds_per_trial", f"{per_trial!r} is not allowed; give a positive integer")
            return (seeds,)
        return tuple(seeds[i : i + per_trial] for i in range(0, len(seeds), per_trial))

    def _resources(self) -> dict:
        raw = self.values.get("resources", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.error("resources", f"{raw!r} is not allowed; give a mapping such as {{cpu: 1, gpu: 0.25}}")
            return dict(DEFAULT_RESOURCES)
        resources = dict(DEFAULT_RESOURCES)
        for key, value in raw.items():
            if key not in RESOURCE_KEYS:
                self.error(f"resources.{key}", f"unknown resource; allowed: {', '.join(RESOURCE_KEYS)}")
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if key == "cpu" and not (ok and value > 0):
                self.error("resources.cpu", f"{value!r} is not allowed; give CPUs per trial > 0 (fractions allowed)")
            elif key == "gpu" and not (ok and (0 <= value <= 1 or float(value).is_integer() and value > 0)):
                self.error(
                    "resources.gpu",
                    f"{value!r} is not allowed; give a GPU fraction in [0, 1] or a whole number of GPUs",
                )
            else:
                resources[key] = float(value)
        return resources

    def _count(self, key: str, default: int, lowest: int, allowed: str) -> int:
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            self.error(key, f"{value!r} is not allowed; give {allowed}")
            return default
        return value

    # -- TrialConfig keys -------------------------------------------------------------------
    def _axis(self, key: str, values: list):
        if not values:
            self.error(key, "an empty list; give at least one value")
            return None
        checked = [self._value(key, v) for v in values]
        if any(v is _BAD for v in checked):
            return None
        seen = set()
        for value in checked:
            if value in seen:
                shown = f"{dataset_label(value)} (the same file, pinned)" if data_file(value) else repr(value)
                self.error(key, f"{shown} is listed twice; each value of an axis must be distinct")
                return None
            seen.add(value)
        return checked

    def _value(self, key: str, value):
        """One value of a TrialConfig field: type-checked, then checked by TrialConfig itself.
        A data file given as dataset comes back pinned (absolute path and SHA-256)."""
        default = default_for(key)
        expected = field_type(key)  # a field whose default is None (kde_noise_var) also takes null
        if key == "architecture" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # 'architecture: 16' is one hidden layer of 16; YAML reads it as a number
        if key == "architecture" and isinstance(value, datetime.date):
            self.error(
                key,
                f"YAML reads {value} as a date; quote the widths, e.g. architecture: '{value.year}-{value.month}-{value.day}'",
            )
            return _BAD
        if key == "architecture" and isinstance(value, str):
            value = self._beside_file(value)
        if expected is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if key in LIST_FIELDS:
            value = [value] if isinstance(value, str) and key == "estimators" else value
            if not isinstance(value, list):
                self.error(key, f"{value!r} is not allowed; give a list (default {list(default)!r})")
                return _BAD
            value = tuple(value)
        elif (value is not None or default is not None) and (
            not isinstance(value, expected) or isinstance(value, bool)
        ):
            kind = {int: "an integer", float: "a number", str: "a string"}.get(expected, expected.__name__)
            self.error(key, f"{value!r} is not allowed; give {kind} (default {default!r})")
            return _BAD
        probe = _probe(key, value)
        if key == "dataset" and data_file(value) is not None:
            if any(k in self.values and k not in self.constants and k not in self.axes for k in DATA_READ_FIELDS):
                return _BAD  # a bad label_column or split is reported already; the file waits for it
            # an axis of train_fraction or split_seed: its first value here, the others when a trial loads
            probe.update(
                {
                    k: self.constants[k] if k in self.constants else self.axes[k][0]
                    for k in DATA_READ_FIELDS
                    if k in self.values
                }
            )
        try:
            config = TrialConfig.from_dict(probe)
            if key == "dataset":
                config, shape = pin_dataset_shape(config)  # reads the file once, here, for every trial
                if shape is not None:
                    self.sample_shapes[config.dataset] = shape
            if key == "architecture" and module_ref(value) is not None:
                from ibray.module_pin import pin_module  # imports torch: only for an own module

                config = pin_module(config, check_measure=False)  # pinned here too; measure: _check_grid
        except DataError as error:
            self.error(key, str(error))
            return _BAD
        except ConfigError as error:
            message = str(error)
            if message.startswith(f"{key}:"):
                self.error(key, message[len(key) + 1 :].strip())
            elif key in ("architecture", "dataset"):
                pass  # a pairing problem, reported once for the whole grid by _check_grid
            else:
                self.error(key, message)
            return value if key in ("architecture", "dataset") else _BAD
        return config.dataset if key == "dataset" else config.architecture if key == "architecture" else value

    def _beside_file(self, architecture: str) -> str:
        """An own module's relative file path taken from the sweep file's folder (`base`)."""
        try:
            ref = module_ref(architecture)
        except ValueError:
            return architecture  # TrialConfig says what is wrong
        if ref is None or not ref.is_file or os.path.isabs(os.path.expanduser(ref.source)) or self.base is None:
            return architecture
        return ModuleRef(os.path.join(self.base, ref.source), ref.factory, ref.sha256).value()

    def _check_size(self, spec: SweepSpec, max_trials: int, max_seed_epochs: int) -> None:
        sizes = " x ".join(f"{len(values)} {key}" for key, values in spec.axes.items())
        grid = f"{sizes} x {len(spec.seed_blocks)} seed block(s)" if sizes else f"{len(spec.seed_blocks)} seed block(s)"
        trials = f"{spec.trial_count:,} trial{'s' if spec.trial_count != 1 else ''}"
        figures = f"{trials} ({grid}) and {spec.seed_epochs:,} seed-epochs"
        for key, value, limit in (
            ("max_trials", spec.trial_count, max_trials),
            ("max_seed_epochs", spec.seed_epochs, max_seed_epochs),
        ):
            if value > limit:
                origin = "the default" if key not in self.values else "as the file sets it"
                self.error(
                    key,
                    f"the grid has {figures}, more than {key} {limit:,} ({origin}); split the file into "
                    f"smaller sweeps, or set {key}: {value} if you mean to run all of it",
                )
        if self.errors:
            raise SweepError("\n".join(self.errors))

    def _check_grid(self, spec: SweepSpec) -> None:
        """The fields TrialConfig checks against one another, in every combination the grid
        has (e.g. each architecture against each data set); every other value was checked once."""
        keys = [key for key in spec.axes if key in TIED_FIELDS]
        problems: dict[str, None] = {}
        widest = max(spec.seed_blocks, key=len)  # an own module's measurement is sized for a trial's seeds
        for values in itertools.product(*(spec.axes[k] for k in keys)):
            point = {**spec.constants, **dict(zip(keys, values)), "seeds": widest}
            try:
                config = TrialConfig.from_dict(point)
                if config.dataset in self.sample_shapes:  # a file read when it was pinned (above)
                    check_sample_shape(config.architecture, config.dataset, self.sample_shapes[config.dataset])
                if module_ref(config.architecture) is not None:
                    from ibray.module_pin import check_measure_names

                    check_measure_names(config)  # an own module's measure names, against the module
            except ConfigError as error:
                problems.setdefault(f"{self.source}: {error}", None)
        if problems:
            raise SweepError("\n".join(problems))


_BAD = object()


def _is_list_of_lists(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)


def _probe(key: str, value) -> dict:
    """A config that checks one value alone: rules that tie two keys are left to the grid check."""
    from ibray.config import ARCHITECTURES, DATASET_FAMILY

    if key == "architecture" and value in ARCHITECTURES:
        family = ARCHITECTURES[value]
        dataset = next(d for d, f in DATASET_FAMILY.items() if f == family)
        return {"architecture": value, "dataset": dataset}
    if key == "dataset" and value in DATASET_FAMILY:
        family = DATASET_FAMILY[value]
        architecture = next(a for a, f in ARCHITECTURES.items() if f == family)
        return {"architecture": architecture, "dataset": value}
    # a data file takes the default architecture (dense 'syn'): every dense network fits a file
    if key == "epochs":
        return {"epochs": value, "prefit_epochs": 1}
    if key == "measure":  # names an own module's layers: checked against the module by the grid
        return {"measure": value, "architecture": "ibray_probe:module"}
    return {key: value}


def _strip_key(error: Exception, key: str) -> str:
    message = str(error)
    return message[len(key) + 1 :].strip() if message.startswith(f"{key}:") else message
