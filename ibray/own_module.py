"""Your own PyTorch module as the network: find its code, pin its file, build it, name its layers.

`architecture: nets.py:lenet5` names a factory in a Python file (relative paths from the working
directory, or from the sweep file's folder in a sweep); `architecture: mypkg.nets:lenet5` one in
an importable module. The factory takes no arguments and returns a torch.nn.Module that maps a
batch of inputs, (B, features), or images, (B, C, H, W) when the data set has an image shape,
to class logits (B, classes).

Like a data file, the code is pinned: `ibray.module_pin.pin_module` appends the SHA-256 of the file's bytes (a
module's: of its source file) to the value, so the trial id names the code it ran, and loading
a pinned value refuses a file that has changed since. A pinned file is looked for at its path,
then by its name in the working directory and on sys.path (where Ray's runtime environment puts
a sweep's files on a worker), and taken only where its bytes still have the pinned hash.

Every problem is a ConfigError of one line that names the module: file or factory not found,
the import or the factory raises, the factory returns no Module, a `measure` name that is not a
submodule, dropout (its masks would come from one random stream shared by all seeds); measured
layers too wide for this machine's memory are refused by ibray.module_pin, which pins the module
and reads the data set's size (this module reads no data). ibray.models.ModuleNetwork runs the
module, batched over seeds.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

import torch
from torch import nn

from ibray.config import DEFAULT_MEASURED, own_module
from ibray.errors import ConfigError
from ibray.module_names import ModuleRef

MAX_SHOWN = 300  # characters of an error from the user's code, quoted in ours

_LOADED: dict[tuple[str, str], object] = {}  # (file, SHA-256) -> the imported Python module


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
    path = _pinned_file(ref) if ref.sha256 else source_file(ref)
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


def source_file(ref: ModuleRef) -> str:
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
        first = source_file(ref)
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
