"""Where a trial computes, and the padding that keeps a seed's arithmetic independent of its slot.

Vectorised kernels (tanh, exp, matrix products) treat the elements of one SIMD register
together and the tail of a row apart; a seed whose block of activations started on another
lane could get other bits. Padding every batch of samples to a multiple of the SIMD width makes
each seed's block start on the same lane whichever slot it occupies.
"""

from __future__ import annotations

import types
import warnings

import torch

from ibray.errors import ConfigError

LANES = 16  # floats per AVX-512 register: batches and chunks are padded to a multiple


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA when torch sees a device, else the CPU), 'cpu' or 'cuda'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but torch sees no CUDA device; use --device auto or cpu")
    return torch.device(name)


def pad_to_lanes(rows: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, int]:
    """Pad `rows` along `dim` to a multiple of LANES by repeating its first row.

    Returns the padded rows and how many are real; callers ignore the padding (loss,
    quantizer ranges, results).
    """
    size = rows.shape[dim]
    missing = -size % LANES
    if not missing:
        return rows, size
    repeats = rows.narrow(dim, 0, 1).expand(*[missing if d == dim else -1 for d in range(rows.dim())])
    return torch.cat([rows, repeats], dim=dim), size


def compiled(function, name: str, device: torch.device):
    """`function` through torch.compile (inductor), shapes fixed; where compiling fails (no C++
    compiler, no Triton), `function` itself, with one warning naming why.

    On the CPU, inductor's C++ compiler is looked for first: without one, torch.compile would
    trace and lower the function (some 20 s) before failing. Otherwise the first call decides:
    compiling happens before anything runs, so falling back then repeats no work. Each new shape
    (a trial's last, shorter batch) costs one more compilation; compiled code is cached on disk
    for later processes. Each call of `compiled` compiles afresh (own_code): a process may train
    many trials one after another.
    """
    if device.type == "cpu":
        missing = missing_cpu_compiler()
        if missing:
            warnings.warn(
                f"engine 'compiled': torch.compile cannot compile {name} on the CPU ({missing}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            return function
    fast = torch.compile(own_code(function), dynamic=False)
    chosen = None

    def call(*args, **kwargs):
        nonlocal chosen
        if chosen is not None:
            return chosen(*args, **kwargs)
        try:
            result = fast(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:  # compiling failed (an error of the
            # function itself keeps its own type and is raised as it is)
            warnings.warn(
                f"engine 'compiled': torch.compile failed for {name} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            chosen = function
            return function(*args, **kwargs)
        chosen = fast
        return result

    return call


def own_code(function):
    """`function` (a function or a bound method) over a copy of its code object.

    Dynamo keeps the graphs it compiles on the code object they came from and, past
    torch._dynamo.config.recompile_limit of them (8), runs that code eagerly without a word. In a
    process that trains trials one after another (a notebook, a Ray worker that Tune reuses), the
    graphs of networks of other shapes and bit widths would add up on one code object until a
    later trial ran eagerly, its numbers no longer those of the same trial run alone. A copy per
    wrapper keeps each trial's graphs apart, and frees them with it.
    """
    plain = getattr(function, "__func__", function)
    copy = types.FunctionType(
        plain.__code__.replace(), plain.__globals__, plain.__name__, plain.__defaults__, plain.__closure__
    )
    copy.__kwdefaults__, copy.__qualname__, copy.__doc__ = plain.__kwdefaults__, plain.__qualname__, plain.__doc__
    bound = getattr(function, "__self__", None)
    return types.MethodType(copy, bound) if bound is not None else copy


def missing_cpu_compiler() -> str:
    """Why inductor has no C++ compiler for CPU code here ('' when it has one), asked the way
    inductor itself asks (its `cpp.cxx` setting, `$CXX`, then g++), which runs `<compiler> --version`
    once a process."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # another torch's layout: torch.compile finds out for itself
        return ""
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return ""
