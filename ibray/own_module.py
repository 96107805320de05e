"""Your own PyTorch module as the network: find its code, pin its file, build it, name its layers.

`architecture: nets.py:lenet5` names a factory in a Python file (relative paths from the working
directory, or from the sweep file's folder in a sweep); `architecture: mypkg.nets:lenet5` one in
an importable module. The factory takes no arguments and returns a torch.nn.Module that maps a
batch of inputs, (B, features), or images, (B, C, H, W) when the data set has an image shape,
to class logits (B, classes).

Like a data file, the code is pinned: `pin_module` appends the SHA-256 of the file's bytes (a
module's: of its source file) to the value, so the trial id names the code it ran, and loading
a pinned value refuses a file that has changed since. A pinned file is looked for at its path,
then by its name in the working directory and on sys.path (where Ray's runtime environment puts
a sweep's files on a worker), and taken only where its bytes still have the pinned hash.

Every problem is a ConfigError of one line that names the module: file or factory not found,
the import or the factory raises, the factory returns no Module, a `measure` name that is not a
submodule, dropout (its masks would come from one random stream shared by all seeds), measured
layers too wide for this machine's memory to count exactly (`check_measured_memory`).
ibray.models.ModuleNetwork runs the module, batched over seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import math
import os
import sys

import torch
from torch import nn

from ibray.config import DEFAULT_MEASURED, own_module
from ibray.errors import ConfigError, DataError
from ibray.module_names import ModuleRef

MAX_SHOWN = 300  # characters of an error from the user's code, quoted in ours

_LOADED: dict[tuple[str, str], object] = {}  # (file, SHA-256) -> the imported Python module


def pin_module(config, check_measure: bool = True):
    """`config` (a TrialConfig) with its own module pinned: the code is found, imported, its
    factory called (and, with `check_measure`, the `measure` names checked and the measurement's
    memory, see `check_measure_names`), and the value gets the SHA-256 of the source file's
    bytes. Any other architecture, or one pinned already, comes back as it is."""
    ref = own_module(config.architecture)
    if ref is None or ref.sha256 is not None:
        return config
    pinned = dataclasses.replace(
        config, architecture=ModuleRef(ref.source, ref.factory, file_sha256(_source_file(ref))).value()
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


def changed_module(before, now: str) -> str | None:
    """What changed between two pinned architecture values naming the same module and factory
    (a resumed trial's and the file's now): a line that says so, or None."""
    try:
        old, new = own_module(before), own_module(now)
    except ConfigError:
        return None
    if old is None or new is None or (old.source, old.factory) != (new.source, new.factory) or old.sha256 == new.sha256:
        return None
    return f"architecture: {_shown(new)} has changed since its trial was pinned (SHA-256 {new.sha256[:8]}..., pinned {old.sha256[:8]}...)"


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
    from ibray import data
    from ibray.data_names import data_file

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


def input_shape(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """What the module gets of one sample: (features,), (C, H, W), or (1, H, W) for (H, W) images
    (one channel)."""
    return (1, *sample_shape) if len(sample_shape) == 2 else tuple(sample_shape)


def probe(module: nn.Module, names: list[str], shape: tuple[int, ...], samples: int) -> tuple[object, list]:
    """Run a batch of `samples` zero inputs of `shape` (one sample's) through `module` in eval
    mode, without gradients, with a forward hook on each submodule in `names`: (what the module
    returned, [(name, its output)] in the order the measured submodules ran: one that runs
    twice is there twice, one that does not run is not). What the module raises is raised; the
    hooks are gone afterwards. ModuleNetwork and `measured_widths` find the measured layers and
    their widths by it."""
    calls: list[tuple[str, object]] = []

    def record(name: str):
        def hook(submodule, inputs, output) -> None:  # returns nothing: the output stays as it is
            calls.append((name, output))

        return hook

    hooks = [module.get_submodule(name).register_forward_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            output = module.eval()(torch.zeros(samples, *shape))
    finally:
        for hook in hooks:
            hook.remove()
    return output, calls


def memory_text(size: float) -> str:
    """Bytes as '1.5 GiB' (binary units, one decimal)."""
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        size /= 1024
        if size < 1024 or unit == "EiB":
            break
    return f"{size:.1f} {unit}"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(architecture: str, seed: int) -> nn.Module:
    """A fresh Module from the factory of a (pinned) architecture value, its parameters drawn
    by the module's own initialisation from the global random stream seeded with `seed` (forked:
    the caller's stream is left as it was)."""
    ref = own_module(architecture)
    factory = load_factory(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory()
        except Exception as error:
            raise ConfigError(f"architecture: {ref.label()}: the factory raised {quoted(error)}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"architecture: {ref.label()}: the factory returned a {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def load_factory(architecture: str):
    """The factory an architecture value names, its code imported once per file and hash; a
    pinned value's file must still have the pinned SHA-256."""
    ref = own_module(architecture)
    path = _pinned_file(ref) if ref.sha256 else _source_file(ref)
    sha256 = ref.sha256 or file_sha256(path)
    key = (path, sha256)
    if key not in _LOADED:
        _LOADED[key] = _import(ref, path, sha256)
    factory = getattr(_LOADED[key], ref.factory, None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(_LOADED[key]).items() if callable(v) and not n.startswith("_"))[:12]
        raise ConfigError(
            f"architecture: {_shown(ref)} has no factory {ref.factory!r}; it defines {', '.join(defined) or 'nothing callable'}"
        )
    return factory


def measured_names(module: nn.Module, measure: tuple[str, ...], label: str) -> list[str]:
    """The submodules whose outputs are measured: `measure`'s names, or (none given) every
    activation module (config.DEFAULT_MEASURED), in named_modules() order."""
    submodules = dict(module.named_modules())
    submodules.pop("", None)
    for name, sub in submodules.items():
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            raise ConfigError(
                f"architecture: {label} holds dropout ({name}); its random masks would come from one stream shared "
                f"by all seeds, so a seed's numbers would depend on its batch mates: remove it (not supported yet)"
            )
    if measure:
        for name in measure:
            if name not in submodules:
                shown = ", ".join(list(submodules)[:12]) + (", ..." if len(submodules) > 12 else "")
                raise ConfigError(f"measure: {name!r} is not a submodule of {label}; its submodules: {shown or 'none'}")
        return list(measure)
    kinds = tuple(getattr(nn, kind) for kind in DEFAULT_MEASURED)
    names = [name for name, sub in submodules.items() if isinstance(sub, kinds)]
    if not names:
        raise ConfigError(
            f"measure: {label} has no activation module ({', '.join(DEFAULT_MEASURED)}; a function such as F.relu "
            f"is not one), so name the layers to measure, e.g. measure: [fc1]"
        )
    return names


def _source_file(ref: ModuleRef) -> str:
    """The file that holds the code of an unpinned value: the .py file, or the module's source."""
    if ref.is_file:
        if not os.path.isfile(ref.source):
            raise ConfigError(
                f"architecture: file {ref.source} not found (relative paths start at the working directory, in a sweep at the sweep file's folder)"
            )
        return ref.source
    try:
        spec = importlib.util.find_spec(ref.source)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"architecture: module {ref.source!r} not found ({quoted(error)})") from None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise ConfigError(
            f"architecture: module {ref.source!r} not found among the importable modules (sys.path: the working directory, installed packages)"
        )
    return spec.origin


def _pinned_file(ref: ModuleRef) -> str:
    """The file of a pinned value whose bytes still have the pinned hash: at its path, else by
    its name in the working directory or on sys.path (a Ray worker's copy of the sweep's files)."""
    try:
        first = _source_file(ref)
    except ConfigError:
        if not ref.is_file:
            raise
        first = None
    name = os.path.basename(ref.source)
    candidates = [first] if first else []
    if ref.is_file:
        candidates += [os.path.join(folder or os.getcwd(), name) for folder in [os.getcwd(), *sys.path]]
    changed = None
    for path in candidates:
        if path and os.path.isfile(path):
            found = file_sha256(path)
            if found == ref.sha256:
                return os.path.abspath(path)
            changed = changed or (path, found)
    if changed:
        raise ConfigError(
            f"architecture: {changed[0]} has changed since it was pinned (SHA-256 {changed[1][:8]}..., pinned "
            f"{ref.sha256[:8]}...); restore it, or start a new sweep (another name) or trial folder with the file as it is"
        )
    raise ConfigError(f"architecture: file {ref.source} not found (nor {name} in the working directory or on sys.path)")


def _import(ref: ModuleRef, path: str, sha256: str):
    """Import the code once; a file under a name of its own, registered in sys.modules (as an
    import would: dataclasses and pickling look classes up there)."""
    try:
        if not ref.is_file:
            return importlib.import_module(ref.source)
        name = f"ibray_own_module_{sha256[:16]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    except Exception as error:
        raise ConfigError(f"architecture: importing {_shown(ref)} failed: {quoted(error)}") from None


def _shown(ref: ModuleRef) -> str:
    return ref.source if ref.is_file else f"module {ref.source!r}"


def quoted(error: BaseException) -> str:
    """An exception in one line, cut to MAX_SHOWN characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
