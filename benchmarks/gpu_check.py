"""The GPU check: one prepared run of everything CUDA-bound, for the first GPU machine at hand.

Runs on a bare GPU machine from the checkout, no install: Python with torch (CUDA build),
numpy, pyarrow and pyyaml; no Ray, Polars or Altair, no network:

    benchmarks/gpu_check.sh            # PYTHONPATH=. python3 benchmarks/gpu_check.py, under 8 min
    python3 benchmarks/gpu_check.py --device cpu --quick   # a dry run of the script on a CPU

Prints every figure and every failure, then a JSON line of the figures; exits 1 if a check
failed, 2 if there is no CUDA device (and no --device cpu). The checks:

1. exact MI counted on the device (`device_layer_information`) against the NumPy counting on
   the same codes: the same states, H(T) and I(T;Y) within 1e-12; whether a seed counted alone
   gives the same bits as in its batch (reported: CUDA's reductions may split rows by shape);
2. its speed: a 50-seed 4096 x 10 layer and a 70000 x 16 one, in ms;
3. training with exact MI every epoch on the device (`ibray bench`'s training_rate): seed-epochs
   per second at 1, 50 and 500 seeds, eager and compiled;
4. the MNIST networks: bottleneck2 at 20 seeds and conv at 10, MI every 2nd epoch (real MNIST
   from $IBRAY_DATA_DIR when it is there, else an MNIST-shaped stand-in), seed-epochs per second;
5. a shortened study trial (synthetic12, tanh, 8 bits, 8 seeds, 200 epochs, MI every 5th) on the
   device and on the CPU, compared row by row: the rows present, the metrics and MI differences;
6. the peak device memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ibray.bench import training_rate  # noqa: E402
from ibray.config import TrialConfig  # noqa: E402
from ibray.data import load_dataset  # noqa: E402
from ibray.mutual_information import device_layer_information, layer_information  # noqa: E402
from ibray.run import run_trial  # noqa: E402

FIGURES: dict = {}
FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(f"{name}: {detail}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counting(device: torch.device, quick: bool) -> None:
    rng = np.random.default_rng(0)
    cases = [(1, 4096, 10, 256), (50, 4096, 10, 256), (8, 3000, 3, 256), (16, 2000, 4, 2**15), (3, 1000, 16, 256)]
    for seeds, samples, width, levels in cases[:3] if quick else cases:
        codes = rng.integers(0, levels, size=(seeds, samples, width)).astype(np.int32)
        codes[:, samples // 3 :] = np.concatenate([codes[:, : samples // 3]] * 3, axis=1)[:, : samples - samples // 3]
        labels = rng.integers(0, 3, size=samples)
        on_host = layer_information(codes, labels)
        on_device = device_layer_information(torch.from_numpy(codes).to(device), labels)
        states = on_device.n_states.tolist() == on_host.n_states.tolist()
        gap = max(np.abs(on_device.h_t - on_host.h_t).max(), np.abs(on_device.mi_ty - on_host.mi_ty).max())
        check(
            f"device counting {seeds}x{samples}x{width}",
            states and gap <= 1e-12,
            f"same states {states}, max |dH| {gap:.1e}",
        )
        alone = [
            device_layer_information(torch.from_numpy(codes[s : s + 1].copy()).to(device), labels)
            for s in range(min(seeds, 4))
        ]
        same = all(a.h_t[0] == on_device.h_t[s] and a.mi_ty[0] == on_device.mi_ty[s] for s, a in enumerate(alone))
        print(f"     a seed counted alone equals it in its batch, bit for bit: {same}")
        FIGURES.setdefault("device_counting_seed_alone_same_bits", []).append(same)


def counting_speed(device: torch.device, quick: bool) -> None:
    rng = np.random.default_rng(1)
    for name, shape in (("mi_ms_50x4096x10", (50, 4096, 10)), ("mi_ms_70000x16", (1, 70000, 16))):
        codes = torch.from_numpy(rng.integers(0, 256, size=shape).astype(np.int32)).to(device)
        labels = rng.integers(0, 10, size=shape[1])
        device_layer_information(codes, labels)
        times = []
        for _ in range(3 if quick else 20):
            synchronize(device)
            started = time.perf_counter()
            device_layer_information(codes, labels)
            synchronize(device)
            times.append(1000 * (time.perf_counter() - started))
        FIGURES[name] = float(np.median(times))
        print(f"     exact MI on the device, {shape}: {FIGURES[name]:.2f} ms (median)", flush=True)


def record_rate(name: str, key: str, *args, **kwargs) -> None:
    """`training_rate(*args, **kwargs)` into FIGURES[key], printed as `name`; a failure is
    printed and checked, and the rest goes on."""
    try:
        rate = training_rate(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 (every failure is printed, the rest goes on)
        check(name, False, f"{type(error).__name__}: {error}")
        traceback.print_exc()
        return
    FIGURES[key] = rate
    print(f"     {name}: {rate:.1f} seed-epochs/s", flush=True)


def training(device: torch.device, quick: bool) -> None:
    dataset = load_dataset("synthetic12")
    engines = ("eager",) if quick else ("eager", "compiled")
    for engine in engines:
        for seeds in (1, 8) if quick else (1, 50, 500):
            epochs = 5 if quick else (20 if seeds < 500 else 10)
            record_rate(
                f"training {engine}, {seeds} seeds, exact MI every epoch",
                f"seed_epochs_per_s_{engine}_{seeds}",
                seeds,
                epochs,
                dataset,
                engine=engine,
                device=device.type,
            )


def mnist_networks(device: torch.device, quick: bool) -> None:
    """The MNIST networks on the device: bottleneck2 at 20 seeds and conv at 10, ReLU, 8 bits,
    MI every 2nd epoch (the sweep files' cadence). Real MNIST where the data directory
    ($IBRAY_DATA_DIR: carry the four IDX files along) has it, else an MNIST-shaped stand-in
    (70,000 random 28x28 images, whose rates are the same arithmetic; 1,400 with --quick)."""
    from ibray.data import DataError
    from ibray.dataset import Dataset

    try:
        if quick:  # a check of the script: the small stand-in
            raise DataError("quick")
        dataset = load_dataset("mnist")
        source = "MNIST"
    except DataError:
        rng = np.random.default_rng(2)
        samples = 1400 if quick else 70000
        x = (rng.random((samples, 784), dtype=np.float32) * (rng.random((samples, 784)) < 0.2)).astype(np.float32)
        y = rng.integers(0, 10, samples)
        train = samples * 6 // 7
        dataset = Dataset("mnist", x, y, np.arange(train), np.arange(train, samples), 10, (28, 28))
        source = "an MNIST-shaped stand-in"
    print(f"     data: {source}, {len(dataset.y)} samples", flush=True)
    for architecture, seeds, epochs in (
        ("bottleneck2", 4 if quick else 20, 2 if quick else 6),
        ("conv", 2 if quick else 10, 2),
    ):
        record_rate(
            f"MNIST {architecture}, {seeds} seeds, exact MI every 2nd epoch",
            f"mnist_{architecture}_{seeds}_seed_epochs_per_s",
            seeds,
            epochs,
            dataset,
            segments=max(1, epochs // 2),
            mi_every=2,
            device=device.type,
            fields=dict(dataset="mnist", architecture=architecture, activation="relu", bits=8),
        )


def rows(folder: Path, table: str) -> dict:
    data = pq.read_table(folder / table).to_pylist()
    key = ("seed", "restarts", "phase", "epoch") + (("layer", "estimator") if table == "mi" else ())
    return {tuple(row[k] for k in key): row for row in data}


def trial_against_cpu(device: torch.device, quick: bool) -> None:
    epochs = 20 if quick else 200
    config = TrialConfig(seeds=tuple(range(8)), epochs=epochs, mi_every=5, dataset="synthetic12")
    places = (device.type, "cpu") if device.type != "cpu" else ("cpu", "cpu again")  # a dry run: twice
    with tempfile.TemporaryDirectory() as scratch:
        for where in places:
            started = time.perf_counter()
            run_trial(
                dataclasses.replace(config, device="cpu" if where.startswith("cpu") else where), Path(scratch) / where
            )
            print(f"     trial on {where}: {time.perf_counter() - started:.1f} s", flush=True)
        first, second = (Path(scratch) / where for where in places)
        for table in ("metrics", "mi"):
            a, b = rows(first, table), rows(second, table)
            check(f"trial {table} rows", a.keys() == b.keys(), f"{len(a)} on {first.name}, {len(b)} on {second.name}")
            shared = a.keys() & b.keys()
            columns = ("train_loss", "test_acc") if table == "metrics" else ("mi_xt", "mi_ty")
            for column in columns:
                gaps = [abs(a[k][column] - b[k][column]) for k in shared]
                FIGURES[f"trial_{table}_{column}_max_gap"] = max(gaps) if gaps else None
                equal = sum(gap == 0 for gap in gaps)
                print(
                    f"     {table}.{column}: {equal} of {len(gaps)} rows equal, largest difference {max(gaps or [0]):.3g}"
                )
            if table == "mi":
                states = sum(a[k]["n_states"] == b[k]["n_states"] for k in shared)
                print(f"     mi.n_states: {states} of {len(shared)} rows equal")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, for a dry run of the script")
    parser.add_argument("--quick", action="store_true", help="small sizes: a check of the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run it on a GPU machine (or --device cpu for a dry run)")
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    FIGURES.update(device=name, torch=torch.__version__)
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    for step in (counting, counting_speed, training, mnist_networks, trial_against_cpu):
        print(f"-- {step.__name__}", flush=True)
        try:
            step(device, args.quick)
        except Exception as error:  # noqa: BLE001 (every failure is printed, the rest goes on)
            check(step.__name__, False, f"{type(error).__name__}: {error}")
            traceback.print_exc()
    if device.type == "cuda":
        FIGURES["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"     peak GPU memory: {FIGURES['peak_gpu_memory_gib']:.2f} GiB")
    print(f"{len(FAILURES)} check(s) failed" if FAILURES else "every check passed")
    print(json.dumps(FIGURES))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
