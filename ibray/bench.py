"""`ibray bench`: training and exact-MI speed on this machine, printed as numbers.

Training: the synthetic network (12-10-7-5-4-3-2), 8 bits, tanh, exact MI of every layer every
epoch, at 1 seed and at many seeds per batched model; and trials on every core at once (one
process each, MI every 5th epoch, as a sweep runs them); in seed-epochs per second, sustained
(measurements in flight beside the training, as in a trial), after a warm-up (which includes
engine 'compiled''s compilation), the data set already loaded; the median of five stretches
of each run. MI: one exact H/I(X;T)/I(T;Y) computation of random
8-bit codes, 4096 x 10 and 70000 x 16 (one thread), median of repeated runs; and one `kde`
estimate of 4096 x 10 float values. `--mnist`: the study's MNIST networks against this machine's
matrix-product peak; `--own-module`: own torch.nn.Modules on MNIST (the own-module engine against
the built-in one on bottleneck2, and the LeNet-style CNN of sweeps/nets.py), against the same peak.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ibray.config import TrialConfig
from ibray.data import load_dataset
from ibray.mutual_information import layer_information
from ibray.trainer import Trainer

_WARMUP_EPOCHS = 2
# The own-module benchmark's networks: the study's bottleneck2 as a plain nn.Sequential (below,
# an importable module's factory) and the LeNet-style CNN of the checkout's sweeps/nets.py.
BOTTLENECK2_MODULE = "ibray.bench:bottleneck2_sequential"
LENET_MODULE = f"{Path(__file__).resolve().parents[1] / 'sweeps' / 'nets.py'}:lenet"


def training_rate(
    seeds: int,
    epochs: int,
    dataset,
    segments: int = 5,
    mi_every: int = 1,
    threads: int | None = None,
    engine: str = "eager",
    device: str = "auto",
    fields: dict | None = None,
    warmup: int = _WARMUP_EPOCHS,
) -> float:
    """Seed-epochs per second of training plus exact MI every `mi_every`-th epoch, sustained:
    the median over `segments` consecutive stretches of one run, a stretch ending when its
    last epoch's measurement is ready (this machine's speed drifts). The run goes on across
    stretches as a trial does, measurements in flight beside the training; only the end
    waits for them. `threads`: the Trainer's (None: its default); `device`: the trial's;
    `fields`: other TrialConfig fields (default: the synthetic network's; an own module's file
    is pinned here). The `warmup` epochs before the stretches include the compilation of
    engine 'compiled'."""
    from ibray.module_pin import pin_module

    per_segment = max(1, epochs // segments)
    config = TrialConfig(
        seeds=tuple(range(seeds)),
        epochs=warmup + segments * per_segment,
        mi_every=mi_every,
        engine=engine,
        device=device,
        **(fields or {}),
    )
    trainer = Trainer(pin_module(config, check_measure=False), dataset, threads=threads)
    trainer.start().wait()
    for _ in range(warmup):
        trainer.step()[0].wait()
    first = trainer.slowest_epoch + 1
    ready: dict[int, float] = {}  # epoch -> when its rows were ready (the measuring thread writes)

    def mark_ready(index: int) -> None:
        ready[index] = time.perf_counter()

    measurements = []
    started = time.perf_counter()
    for index in range(segments * per_segment):
        measurement = trainer.step()[0]
        measurement.when_done(functools.partial(mark_ready, index))
        measurements.append(measurement)
    layers = sum(len(measurement.mi.get("seed", [])) for measurement in measurements)  # waits for them
    measured = sum(config.measured_at(epoch) for epoch in range(first, first + segments * per_segment))
    if layers != seeds * measured * len(trainer.model.layers):
        raise RuntimeError(f"the benchmark measured {layers} layer rows, not one per seed, measured epoch and layer")
    # A stretch is done when its epochs' rows and every earlier epoch's are ready.
    done = [started] + [max(ready[i] for i in range(end)) for end in range(per_segment, len(ready) + 1, per_segment)]
    return statistics.median(seeds * per_segment / (later - earlier) for earlier, later in zip(done, done[1:]))


def _one_core(seeds: int, epochs: int, mi_every: int, engine: str, barrier, results) -> None:
    torch.set_num_threads(1)
    dataset = load_dataset("synthetic12")
    barrier.wait()  # every core starts together
    results.put(training_rate(seeds, epochs, dataset, mi_every=mi_every, threads=1, engine=engine))


def all_cores_rate(seeds: int, epochs: int, mi_every: int, cores: int | None = None, engine: str = "eager") -> float:
    """Seed-epochs per second of `cores` trials at once (default: one per core), each a
    process training `seeds` seeds on one thread with MI every `mi_every`-th epoch, as a
    sweep's trials with `resources: {cpu: 1}` run: the sum of their rates."""
    cores = cores or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(cores), context.Queue()
    workers = [
        context.Process(target=_one_core, args=(seeds, epochs, mi_every, engine, barrier, results))
        for _ in range(cores)
    ]
    for worker in workers:
        worker.start()
    rates = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def mi_milliseconds(samples: int, width: int, repeats: int = 20) -> float:
    torch.set_num_threads(1)  # as in a trial (its sort may use torch's)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(samples, width), dtype=np.uint8)
    labels = rng.integers(0, 10, size=samples)
    layer_information(codes, labels)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        layer_information(codes, labels)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def kde_milliseconds(samples: int = 4096, width: int = 10, repeats: int = 5) -> float:
    """One `kde` estimate (I(X;T) and I(T;Y), one seed) of random values, on one thread."""
    from ibray.estimators import kde_information

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    values, labels = rng.standard_normal((samples, width)), rng.integers(0, 10, size=samples)
    kde_information(values, labels, 1e-3)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        kde_information(values, labels, 1e-3)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matrix-product rate on `threads` threads (torch, size x size),
    the median of `repeats`: the peak the MNIST figures are compared with."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / statistics.median(times) / 1e9


def network_macs(architecture: str, inputs: int = 784, classes: int = 10) -> tuple[int, int]:
    """Multiply-adds of one sample's forward pass: (all layers, the first layer alone).

    Conv: 3x3 kernels over 26x26 (1 -> 2 channels), then 11x11 (2 -> 2), dense 50 -> 16."""
    from ibray.config import hidden_widths
    from ibray.models import CONV_CHANNELS, CONV_DENSE

    if architecture == "conv":
        first = 26 * 26 * CONV_CHANNELS * 9
        widths = [CONV_CHANNELS * 5 * 5, CONV_DENSE, classes]
        rest = 11 * 11 * CONV_CHANNELS * CONV_CHANNELS * 9 + sum(a * b for a, b in zip(widths, widths[1:]))
        return first + rest, first
    widths = [inputs, *hidden_widths(architecture), classes]
    macs = [a * b for a, b in zip(widths, widths[1:])]
    return sum(macs), macs[0]


def module_macs(architecture: str, sample_shape: tuple[int, ...]) -> tuple[int, int]:
    """`network_macs` of an own module: one sample's multiply-adds in its nn.Linear and
    convolution layers (counted by running it on one sample of `sample_shape`), and those of
    the first of them to run."""
    from ibray.own_module import build

    module = build(architecture, seed=0).eval()
    macs: list[int] = []

    def count(layer: nn.Module, inputs, output: torch.Tensor) -> None:
        if isinstance(layer, nn.Linear):
            macs.append(output.numel() * layer.in_features)
        else:
            macs.append(output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size))

    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    hooks = [layer.register_forward_hook(count) for layer in module.modules() if isinstance(layer, kinds)]
    shape = (1, *sample_shape) if len(sample_shape) == 2 else tuple(sample_shape)  # (H, W): one channel
    try:
        with torch.no_grad():
            module(torch.zeros(1, *shape))
    finally:
        for hook in hooks:
            hook.remove()
    if not macs:
        raise ValueError(f"{architecture} has no nn.Linear or convolution layer to count")
    return sum(macs), macs[0]


def seed_epoch_gflop(
    architecture: str, train: int, samples: int, mi_every: int, macs: tuple[int, int] | None = None
) -> float:
    """Floating-point work of one seed-epoch, in GFLOP: training (forward, and backward as two
    products a layer, the first layer's input gradient excepted) over the `train` samples,
    plus a measuring pass over all `samples` every `mi_every`-th epoch. `macs`: (all layers,
    the first) of one sample (default: `network_macs(architecture)`'s)."""
    total, first = macs or network_macs(architecture)
    return 2 * (train * (3 * total - first) + samples * total / mi_every) / 1e9


def mnist_benchmarks(engine: str = "eager", epochs: int = 6, data_dir=None, as_json: bool = False) -> dict:
    """`ibray bench --mnist`: the study's MNIST networks (ReLU, 8 bits, MI every 2nd epoch, as
    the sweep files), seed-epochs per second of one trial on two threads (one trains, one
    measures, as `ibray trial`), and the share of this machine's matrix-product peak (measured
    in the same run) that each reaches."""
    dataset = load_dataset("mnist", data_dir)
    peak_1, peak_all = matmul_gflops(1), matmul_gflops(os.cpu_count() or 1)
    print(
        f"matrix product, float32 2048 x 2048: {peak_1:.0f} GFLOP/s on 1 thread, {peak_all:.0f} on {os.cpu_count()} (the peak)"
    )
    figures: dict = {"engine": engine, "matmul_gflops_1_thread": peak_1, "matmul_gflops_peak": peak_all}
    runs = [("bottleneck2", 10, epochs), ("bottleneck2", 20, epochs), ("conv", 10, 2)]
    for architecture, seeds, run_epochs in runs:
        segments = max(1, run_epochs // 2)  # stretches of 2 epochs: one measurement each
        rate = training_rate(
            seeds,
            run_epochs,
            dataset,
            segments=segments,
            mi_every=2,
            threads=2,
            engine=engine,
            fields=dict(dataset="mnist", architecture=architecture, activation="relu", bits=8),
        )
        work = seed_epoch_gflop(architecture, len(dataset.train_idx), len(dataset.y), mi_every=2)
        key = f"mnist_{architecture}_{seeds}"
        figures[f"{key}_seed_epochs_per_s"] = rate
        figures[f"{key}_of_peak"] = rate * work / peak_all
        print(
            f"MNIST {architecture}, 8-bit ReLU, {seeds} seeds, exact MI every 2nd epoch: {rate:6.2f} seed-epochs/s, "
            f"{rate * work:5.1f} GFLOP/s ({work:.2f} GFLOP a seed-epoch), {100 * rate * work / peak_all:4.1f}% of the peak"
        )
    figures["peak_rss_gib"] = _peak_rss_gib()
    print(f"peak resident memory of this process: {figures['peak_rss_gib']:.2f} GiB")
    if as_json:
        print(json.dumps(figures))
    return figures


def bottleneck2_sequential() -> nn.Module:
    """The study's bottleneck2, 784-16-8-4-2-10 with ReLU, as a plain nn.Sequential (MNIST's
    (B, 1, 28, 28) images flattened first): `ibray bench --own-module`'s own module."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 16),
        nn.ReLU(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
        nn.ReLU(),
        nn.Linear(4, 2),
        nn.ReLU(),
        nn.Linear(2, 10),
    )


def own_module_benchmarks(
    data_dir=None,
    dataset=None,
    seeds: int = 10,
    epochs: int = 4,
    cnn_epochs: int = 2,
    cnn: str = LENET_MODULE,
    peak_size: int = 2048,
    as_json: bool = False,
) -> dict:
    """`ibray bench --own-module`: own torch.nn.Modules on MNIST (or `dataset`, a stand-in of
    MNIST's shape), 8 bits, exact MI every 2nd epoch, `seeds` seeds, two threads (as `ibray
    trial`): bottleneck2 as an nn.Sequential (the own-module engine: autograd, the seeds run
    grouped by the Sequential's plan, see models.ModuleNetwork) against the built-in dense
    engine on the same data and seeds, over `epochs` epochs after two warm-up ones, and their
    ratio; then the CNN `cnn` (sweeps/nets.py's LeNet-style one: its seeds one after the other)
    over `cnn_epochs` after one. Each in seed-epochs per second (the median of 2-epoch
    stretches) and as a share of this machine's matrix-product peak, measured in the same run
    (`peak_size`: its matrices' side)."""
    dataset = dataset if dataset is not None else load_dataset("mnist", data_dir)
    threads = os.cpu_count() or 1
    peak_1, peak_all = matmul_gflops(1, peak_size), matmul_gflops(threads, peak_size)
    print(
        f"matrix product, float32 {peak_size} x {peak_size}: {peak_1:.0f} GFLOP/s on 1 thread, {peak_all:.0f} on "
        f"{threads} (the peak)"
    )
    figures: dict = {"seeds": seeds, "matmul_gflops_1_thread": peak_1, "matmul_gflops_peak": peak_all}
    train, samples = len(dataset.train_idx), len(dataset.y)
    runs = [
        ("bottleneck2", "bottleneck2", "built-in dense engine", dict(activation="relu")),
        ("bottleneck2_module", BOTTLENECK2_MODULE, "as an nn.Sequential, own module", {}),
        ("cnn_module", cnn, "LeNet-style CNN, own module", {}),
    ]
    for key, architecture, what, fields in runs:
        is_cnn = key == "cnn_module"
        run_epochs = cnn_epochs if is_cnn else epochs
        rate = training_rate(
            seeds,
            run_epochs,
            dataset,
            segments=max(1, run_epochs // 2),  # stretches of 2 epochs: one measurement each
            mi_every=2,
            threads=2,
            fields=dict(dataset="mnist", architecture=architecture, bits=8, **fields),
            warmup=1 if is_cnn else _WARMUP_EPOCHS,
        )
        macs = None if architecture == "bottleneck2" else module_macs(architecture, dataset.sample_shape)
        work = seed_epoch_gflop(architecture, train, samples, mi_every=2, macs=macs)
        figures[f"{key}_seed_epochs_per_s"] = rate
        figures[f"{key}_gflop_per_seed_epoch"] = work
        figures[f"{key}_of_peak"] = rate * work / peak_all
        name = "bottleneck2" if key.startswith("bottleneck2") else os.path.basename(architecture)
        print(
            f"MNIST {name} ({what}), 8 bits, {seeds} seeds, exact MI every 2nd epoch: {rate:.3g} seed-epochs/s, "
            f"{rate * work:5.1f} GFLOP/s ({work:.2f} GFLOP a seed-epoch), {100 * rate * work / peak_all:4.1f}% of the peak"
        )
        if key == "bottleneck2_module":
            ratio = rate / figures["bottleneck2_seed_epochs_per_s"]
            figures["bottleneck2_module_over_built_in"] = ratio
            print(f"  the own-module engine on bottleneck2 runs at {ratio:.2f} times the built-in engine's rate")
    figures["peak_rss_gib"] = _peak_rss_gib()
    print(f"peak resident memory of this process: {figures['peak_rss_gib']:.2f} GiB")
    if as_json:
        print(json.dumps(figures))
    return figures


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run_benchmarks(
    epochs: int = 20, seeds: int = 50, trial_seeds: int = 25, engine: str = "eager", as_json: bool = False
) -> dict:
    dataset = load_dataset("synthetic12")
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"device {device}, engine {engine}"
    )
    figures = {
        "engine": engine,
        "seed_epochs_per_s_1": training_rate(1, epochs, dataset, engine=engine),
        f"seed_epochs_per_s_{seeds}": training_rate(seeds, max(epochs, 5), dataset, engine=engine),
        f"seed_epochs_per_s_all_cores_{trial_seeds}_mi5": all_cores_rate(
            trial_seeds, max(epochs, 25), mi_every=5, engine=engine
        ),
        "mi_ms_4096x10": mi_milliseconds(4096, 10),
        "mi_ms_70000x16": mi_milliseconds(70000, 16),
        "kde_ms_4096x10": kde_milliseconds(4096, 10),
        "device": device,
    }
    print(
        f"training, syn 8-bit tanh, exact MI every epoch:  1 seed  {figures['seed_epochs_per_s_1']:8.1f} seed-epochs/s"
    )
    print(
        f"training, syn 8-bit tanh, exact MI every epoch: {seeds:2d} seeds {figures[f'seed_epochs_per_s_{seeds}']:8.1f} seed-epochs/s"
    )
    print(
        f"training, syn 8-bit tanh, exact MI every 5th epoch, {os.cpu_count()} trials of {trial_seeds} seeds at once "
        f"(one per core): {figures[f'seed_epochs_per_s_all_cores_{trial_seeds}_mi5']:8.1f} seed-epochs/s"
    )
    print(f"exact MI of one layer,  4096 x 10, 8-bit codes: {figures['mi_ms_4096x10']:8.2f} ms")
    print(f"exact MI of one layer, 70000 x 16, 8-bit codes: {figures['mi_ms_70000x16']:8.2f} ms")
    print(f"kde estimate of one layer,  4096 x 10, float64: {figures['kde_ms_4096x10']:8.2f} ms")
    if as_json:
        print(json.dumps(figures))
    return figures
