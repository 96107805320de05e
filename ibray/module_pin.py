"""Pinning your own module, and checking it before a trial starts: `pin_module` finds its code
and appends its file's SHA-256 (ibray.own_module finds, imports and builds it), checks its
`measure` names, and refuses a module whose exact measurement would not fit this machine's
memory (`check_measured_memory`: the measured layers' widths, from one sample run through the
module, times the data set's samples and the trial's seeds, against the physical memory or the
container's limit).

Above both ibray.own_module and ibray.data: the memory check needs the data set's size, which a
data file only tells once read. `ibray trial`, `ibray.api.run`, the sweep loader, `ibray.run.run_resumable`
and `ibray bench` pin through here; ibray.models builds through ibray.own_module.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch

from ibray import data
from ibray.config import own_module
from ibray.data_names import data_file
from ibray.errors import ConfigError, DataError
from ibray.module_names import ModuleRef
from ibray.own_module import build, file_sha256, input_shape, measured_names, probe, source_file


def pin_module(config, check_measure: bool = True):
    """`config` (a TrialConfig) with its own module pinned: the code is found, imported, its
    factory called (and, with `check_measure`, the `measure` names checked and the measurement's
    memory, see `check_measure_names`), and the value gets the SHA-256 of the source file's
    bytes. Any other architecture, or one pinned already, comes back as it is."""
    ref = own_module(config.architecture)
    if ref is None or ref.sha256 is not None:
        return config
    pinned = dataclasses.replace(
        config, architecture=ModuleRef(ref.source, ref.factory, file_sha256(source_file(ref))).value()
    )
    if check_measure:
        check_measure_names(pinned)
    else:
        build(pinned.architecture, seed=0)
    return pinned


def check_measure_names(config) -> None:
    """Build a pinned config's own module once and check its `measure` names, then that an
    exact measurement of its measured layers fits this machine's memory (`check_measured_memory`;
    nothing for another architecture); ConfigError says what is wrong."""
    ref = own_module(config.architecture)
    if ref is not None:
        measured_names(build(config.architecture, seed=0), config.measure, ref.label())
        check_measured_memory(config)


# -- what an exact measurement holds -------------------------------------------------------------
# A measurement holds every sample's codes of every measured layer and seed at once (ibray.measure:
# one pass over the whole data set, then the exact count, layer by layer). Per code (one neuron's
# output for one sample and seed) the pass keeps the layer's float32 values and its codes (held as
# float32): 8 bytes; the count converts every layer's codes to the narrowest integers (1 byte up to
# 8 bits, 2 up to 16) and copies the layer it counts neuron by neuron (as many bytes again). A
# float network's codes are its values' bit patterns: 4 bytes kept, 4 + 4 + 1 (a copy, the
# neuron-major copy, a NaN check) while its layer is counted. Measured, a 2-seed measurement of
# 4096 samples x 8194 neurons: 10.3, 12.3 and 12.6 bytes a code at 8, 16 and 32 bits.
def code_bytes(bits: int) -> tuple[int, int]:
    """(bytes a measurement keeps per code of every measured layer, bytes more per code of the
    layer it is counting) at `bits`."""
    if bits <= 8:
        return 9, 1
    if bits <= 16:
        return 10, 2
    return 4, 9


def measurement_bytes(widths: list[int], samples: int, seeds: int, bits: int) -> int:
    """Peak bytes of one exact measurement of layers `widths` (neurons a sample, the softmax
    output included) over `samples` samples and `seeds` seeds."""
    kept, counting = code_bytes(bits)
    return seeds * samples * (kept * sum(widths) + counting * max(widths))


def memory_limit() -> int | None:
    """This machine's memory in bytes: its physical memory, or its control group's limit (a
    container's) where that is lower; None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total if total > 0 else None


_DATA_SIZES: dict = {}  # a pinned data file's DataKey -> (samples, sample shape, classes)


def data_size(config) -> tuple[int, tuple[int, ...], int] | None:
    """(samples, one sample's shape, classes) of a config's data set: a built-in set's fixed
    size (nothing read, so no data directory needed), a data file's as read (once per pinned
    value: its bytes cannot change). None for a file that cannot be read: the trial that reads
    it says why."""
    if config.dataset in ("synthetic12", "szt"):
        return data.SYNTHETIC_SAMPLES, (data.SYNTHETIC_BITS,), 2
    if config.dataset == "mnist":
        return sum(data.MNIST_COUNTS), tuple(data.MNIST_IMAGE_SHAPE), 10
    file = data_file(config.dataset)
    if file is None:
        return None
    key = data.DataKey.of(config)
    if key in _DATA_SIZES:
        return _DATA_SIZES[key]
    try:
        dataset = key.load()
    except DataError:
        return None
    size = len(dataset.y), tuple(dataset.sample_shape), dataset.n_classes
    if file.sha256 is not None:
        _DATA_SIZES[key] = size
    return size


def check_measured_memory(config) -> None:
    """Refuse (ConfigError, one line) an own module whose exact measurement on the config's data
    set, with the config's seeds and bits, would need more than this machine's memory: the line
    names the widest measured layer, its width and what counting it needs. Nothing for another
    architecture, or where the data or the memory cannot be known; a module that does not fit
    the data passes (the trial, building it, says what is wrong)."""
    ref = own_module(config.architecture)
    size = data_size(config) if ref is not None else None
    limit = memory_limit()
    if size is None or limit is None:
        return
    samples, shape, _ = size
    widths = measured_widths(config, shape)
    if widths is None:
        return
    layers = list(widths.items())
    seeds = len(config.seeds)
    need = measurement_bytes([width for _, width in layers], samples, seeds, config.bits)
    if need <= limit:
        return
    name, width = max(layers, key=lambda layer: layer[1])
    per_code = sum(code_bytes(config.bits))
    raise ConfigError(
        f"measure: layer {name!r} of {ref.label()} is {width:,} neurons wide; counting it exactly holds "
        f"its codes of {samples:,} samples x {seeds} seed{'s' if seeds != 1 else ''} at once, "
        f"{memory_text(seeds * samples * width * per_code)} ({per_code} bytes a code), "
        f"{memory_text(need)} with the other measured layers: more than this machine's {memory_text(limit)} of "
        f"memory; measure narrower layers (measure), fewer seeds per trial, or fewer samples"
    )


def measured_widths(config, sample_shape: tuple[int, ...]) -> dict[str, int] | None:
    """The measured layers of a config's own module and their widths (features per sample), by
    running one sample of `sample_shape` through it (`probe`); None where the module cannot be
    built or run on it (the trial, building it, says why). The layer names as rows name them;
    the softmax output's width is the classes'."""
    try:
        template = build(config.architecture, seed=0)
        names = measured_names(template, tuple(config.measure), own_module(config.architecture).label())
    except ConfigError:
        return None
    try:
        logits, calls = probe(template, names, input_shape(sample_shape), samples=1)
    except Exception:  # noqa: BLE001 - the trial's own probe reports what the module rejects
        return None
    widths: dict[str, int] = {}
    for name, output in calls:
        if isinstance(output, torch.Tensor):
            widths.setdefault(name, math.prod(output.shape[1:]))
    if isinstance(logits, torch.Tensor):
        widths["output"] = math.prod(logits.shape[1:])
    return widths


def memory_text(size: float) -> str:
    """Bytes as '1.5 GiB' (binary units, one decimal)."""
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        size /= 1024
        if size < 1024 or unit == "EiB":
            break
    return f"{size:.1f} {unit}"
