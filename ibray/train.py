"""The training loop of one trial: a block of seeds trained together, measured every N epochs.

Knows nothing of Ray. `Trainer` owns the batched network, a per-seed Adam, per-seed random
streams and per-seed epoch counters; each measurement runs the whole data set through the
network with the quantizer ranges held fixed and turns the codes into exact MI (and binning
estimates) as columnar rows. `run_trial` drives a Trainer, writes the rows to Parquet as it
goes and hands a checkpoint to a callback at every write, so a caller (the CLI, the Ray
trainable) can resume.

Every seed slot is independent: its own initialisation, shuffling and label stream (derived
from (seed, restarts)), its own Adam step count, its own quantizer range and its own epoch
counter. A slot whose training accuracy is below `min_train_acc` at `restart_epoch` is
re-initialised from a fresh stream and trained from epoch 0 while the others go on.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ibray.config import ConfigError, TrialConfig, binning_bins
from ibray.data import Dataset, load_dataset
from ibray.models import BatchedNetwork, Pass
from ibray.mutual_information import bin_codes, float_codes, layer_information
from ibray.records import (
    ResultsWriter,
    is_uri,
    join,
    list_parts,
    read_text,
    remove_temporaries,
    replace_atomically,
    write_text_atomic,
)

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPSILON = 1e-7  # Keras' default, as in the study
_EVAL_CHUNK = 8192  # samples per forward chunk of the MI pass, at most (bounds memory on MNIST)
_OVERLAP_SEEDS = 8  # from this many seeds on, measurements run beside the training
_LANES = 16  # floats per AVX-512 register: batches and chunks are padded to a multiple
PROGRESS_EVERY_S = 5.0  # seconds between light progress reports (no checkpoint)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but torch sees no CUDA device; use --device auto or cpu")
    return torch.device(name)


def _pad_to_lanes(rows: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, int]:
    """Pad `rows` along `dim` to a multiple of the SIMD width by repeating its first rows.

    Every seed's block of activations then starts on the same vector lane, so vectorised
    tanh/exp give a seed the same bits whichever slot it occupies. Returns the padded rows
    and how many are real; the padding is ignored (loss, quantizer ranges, results).
    """
    size = rows.shape[dim]
    missing = -size % _LANES
    if not missing:
        return rows, size
    repeats = rows.narrow(dim, 0, 1).expand(*[missing if d == dim else -1 for d in range(rows.dim())])
    return torch.cat([rows, repeats], dim=dim), size


def slot_streams(seed: int, restarts: int) -> tuple[int, int, int]:
    """Independent stream seeds (init, shuffling, prefit labels) of one attempt of a seed."""
    init, shuffle, labels = np.random.SeedSequence([seed, restarts]).generate_state(3)
    return int(init), int(shuffle), int(labels)


class Measurement:
    """Rows of one measurement, columnar, ready for ResultsWriter.

    A measurement runs on the trainer's worker thread while the next epoch trains (torch and
    numpy release the GIL, so the two share the cores); reading `.mi` or `.metrics` waits.
    """

    def __init__(self, pending: Future | None = None, mi: dict | None = None, metrics: dict | None = None) -> None:
        self._pending = pending
        self._mi: dict[str, list] = mi if mi is not None else {}
        self._metrics: dict[str, list] = metrics if metrics is not None else {}

    def _settle(self) -> None:
        if self._pending is not None:
            self._mi, self._metrics = self._pending.result()
            self._pending = None

    @property
    def empty(self) -> bool:
        """True for the measurement of an epoch where no seed was due."""
        return self._pending is None and not self._mi and not self._metrics

    @property
    def mi(self) -> dict[str, list]:
        self._settle()
        return self._mi

    @property
    def metrics(self) -> dict[str, list]:
        self._settle()
        return self._metrics

    def extend(self, other: "Measurement") -> None:
        for mine, theirs in ((self.mi, other.mi), (self.metrics, other.metrics)):
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)


def mi_rows(
    estimators: tuple[str, ...],
    layers: list,
    codes: list[np.ndarray] | None,
    values: list[np.ndarray] | None,
    bounds: list | None,
    extremes: list[tuple[list[float], list[float]]],
    labels: np.ndarray,
    axes: dict[str, list],
) -> dict[str, list]:
    """The MI rows of one measurement, from the layers' codes (or float values) and labels."""
    seeds = len(axes["seed"])
    columns: dict[str, list] = {}
    for estimator in estimators:
        for number, spec in enumerate(layers, start=1):
            if estimator == "exact":
                layer_codes = codes[number - 1] if codes is not None else float_codes(values[number - 1])
            else:
                layer_codes = bin_codes(values[number - 1], binning_bins(estimator), *bounds[number - 1])
            info = layer_information(layer_codes, labels)
            rows = {
                **axes,
                "estimator": [estimator] * seeds,
                "layer": [number] * seeds,
                "layer_name": [spec.name] * seeds,
                "width": [spec.width] * seeds,
                "mi_xt": info.mi_xt.tolist(),
                "mi_ty": info.mi_ty.tolist(),
                "h_t": info.h_t.tolist(),
                "n_states": info.n_states.tolist(),
                "t_min": extremes[number - 1][0],
                "t_max": extremes[number - 1][1],
            }
            for key, column in rows.items():
                columns.setdefault(key, []).extend(column)
    return columns


class Trainer:
    def __init__(
        self,
        config: TrialConfig,
        dataset: Dataset,
        sweep: str = "",
        global_ranges: dict[tuple[int, int], tuple[float, float]] | None = None,
        measure_mi: bool = True,
    ) -> None:
        self.config = config
        self.sweep = sweep
        self.trial = config.trial_id()
        self.device = pick_device(config.device)
        if self.device.type == "cpu":
            # One core trains and (from _OVERLAP_SEEDS seeds on) a second measures: even 50
            # seeds make small tensors, where intra-op threads cost more hand-offs than they
            # save (measured). More cores serve more trials (Ray), not one trial.
            torch.set_num_threads(1)
        self.global_ranges = global_ranges
        self.measure_mi = measure_mi
        self.seen_ranges: dict[tuple[int, int], tuple[float, float]] = {}
        self._worker: ThreadPoolExecutor | None = None  # measures while the next epoch trains
        self._eval_model: BatchedNetwork | None = None  # the worker's copy of the network
        self._inflight: list[Measurement] = []
        self.total_epochs = config.prefit_epochs + config.epochs
        self.x = torch.as_tensor(dataset.x, dtype=torch.float32, device=self.device)
        self.y = np.asarray(dataset.y, dtype=np.int64)
        self.y_device = torch.as_tensor(self.y, device=self.device)
        self.train_idx = torch.as_tensor(dataset.train_idx, dtype=torch.long, device=self.device)
        self.test_idx = torch.as_tensor(dataset.test_idx, dtype=torch.long, device=self.device)
        self.train_labels = self.y_device[self.train_idx]
        self.x_train = self.x[self.train_idx]
        # Samples per forward chunk of the MI pass: the conv network's patches are large.
        per_sample = dataset.x.shape[1] * (9 if config.architecture == "conv" else 1) * len(config.seeds)
        self._eval_chunk = max(_LANES, min(_EVAL_CHUNK, (2**24 // per_sample) // _LANES * _LANES))
        seeds = len(config.seeds)
        self.model = BatchedNetwork(
            config.architecture,
            config.activation,
            inputs=dataset.x.shape[1],
            classes=dataset.n_classes,
            bits=config.bits,
            seeds=seeds,
            init=config.init,
            tracking=config.range_tracking,
            ema_decay=config.ema_decay,
            image_shape=dataset.image_shape,
        ).to(self.device)
        params = self.params = list(self.model.parameters())
        self.adam_m = [torch.zeros_like(p) for p in params]
        self.adam_v = [torch.zeros_like(p) for p in params]
        self.adam_step = [0] * seeds  # Adam steps taken, per seed
        self.seeds = list(config.seeds)
        self.restarts = [0] * seeds
        self.slot_epoch = [0] * seeds  # epochs completed, prefit included
        self.shufflers = [torch.Generator() for _ in range(seeds)]
        self.prefit_labels = torch.zeros(seeds, len(self.train_idx), dtype=torch.long, device=self.device)
        for slot in range(seeds):
            self._init_slot(slot, calibrate=False)
        self._calibrate(list(range(seeds)))

    # -- slots ------------------------------------------------------------------------------
    def _init_slot(self, slot: int, calibrate: bool = True) -> None:
        init_seed, shuffle_seed, label_seed = slot_streams(self.seeds[slot], self.restarts[slot])
        self.model.init_slot(slot, torch.Generator().manual_seed(init_seed))
        for m, v in zip(self.adam_m, self.adam_v):
            m[slot].zero_()
            v[slot].zero_()
        self.adam_step[slot] = 0
        self.slot_epoch[slot] = 0
        self.shufflers[slot].manual_seed(shuffle_seed)
        order = torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(label_seed))
        self.prefit_labels[slot] = self.train_labels[order.to(self.device)]
        if calibrate:
            self._calibrate([slot])

    @torch.no_grad()
    def _calibrate(self, slots: list[int]) -> None:
        """Set the quantizer ranges of fresh slots from the training set (epoch 0's ranges)."""
        quantizers = self.model.quantizers
        if quantizers is None:
            return
        saved = [(q.low.clone(), q.high.clone(), q.tracking) for q in quantizers]
        self.model.train()
        for q in quantizers:
            q.reset()
            q.tracking = "epoch"
        for start in range(0, len(self.train_idx), self._eval_chunk):
            chunk, size = _pad_to_lanes(self.x_train[start : start + self._eval_chunk])
            self.model(chunk, valid=size)
        keep = torch.ones(len(self.seeds), dtype=torch.bool, device=self.device)
        keep[slots] = False
        for q, (low, high, tracking) in zip(quantizers, saved):
            q.low.copy_(torch.where(keep, low, q.low))
            q.high.copy_(torch.where(keep, high, q.high))
            q.tracking = tracking

    def phase_epoch(self, total: int) -> tuple[str, int]:
        """(phase, epoch within the phase) after `total` completed epochs."""
        prefit = self.config.prefit_epochs
        if prefit and total <= prefit:
            return "prefit", total
        return "train", total - prefit

    @property
    def done(self) -> bool:
        return all(epoch >= self.total_epochs for epoch in self.slot_epoch)

    @property
    def epochs_run(self) -> int:
        """Epochs of the slowest slot: the trial's progress."""
        return min(self.slot_epoch)

    def progress(self) -> dict[str, int]:
        """The slowest slot's epoch, seed-epochs trained by the kept attempts, and seed-epochs
        left (a restarted seed's whole new run included)."""
        return {
            "epoch": self.epochs_run,
            "seed_epochs_done": sum(self.slot_epoch),
            "seed_epochs_left": sum(self.total_epochs - epoch for epoch in self.slot_epoch),
        }

    # -- training ---------------------------------------------------------------------------
    def _adam(self) -> None:
        beta1, beta2 = _ADAM_BETAS
        self.adam_step = [step + 1 for step in self.adam_step]
        # Keras' form: lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), per seed. Computed in
        # Python: torch's vectorised pow would round a seed's rate by its slot's position.
        lr = self.config.learning_rate
        rate = torch.tensor(
            [lr * math.sqrt(1 - beta2**step) / (1 - beta1**step) for step in self.adam_step], device=self.device
        )
        params = self.params
        grads = [p.grad for p in params]
        # Only plain multiplies, adds, divides and square roots (no lerp, addcmul or alpha=):
        # those are exact in IEEE arithmetic, so the vectorised body and the scalar tail of a
        # kernel agree and a seed's update does not depend on where its slot starts.
        with torch.no_grad():
            torch._foreach_mul_(self.adam_m, beta1)
            torch._foreach_add_(self.adam_m, torch._foreach_mul(grads, 1 - beta1))
            torch._foreach_mul_(self.adam_v, beta2)
            squares = torch._foreach_mul(grads, grads)
            torch._foreach_mul_(squares, 1 - beta2)
            torch._foreach_add_(self.adam_v, squares)
            denominators = torch._foreach_sqrt(self.adam_v)
            torch._foreach_add_(denominators, _ADAM_EPSILON)
            updates = torch._foreach_div(self.adam_m, denominators)
            rates = [rate.reshape((-1,) + (1,) * (p.dim() - 1)) for p in params]
            torch._foreach_mul_(updates, rates)
            torch._foreach_sub_(params, updates)
        for p in params:
            p.grad = None

    def train_epoch(self) -> None:
        """One epoch for every slot still short of its total (finished slots idle along)."""
        active = [epoch < self.total_epochs for epoch in self.slot_epoch]
        n_train = len(self.train_idx)
        orders = torch.stack(
            [
                torch.randperm(n_train, generator=gen) if is_active else torch.arange(n_train)
                for gen, is_active in zip(self.shufflers, active)
            ]
        ).to(self.device)
        in_prefit = torch.tensor(
            [epoch < self.config.prefit_epochs for epoch in self.slot_epoch], device=self.device
        )
        labels = torch.where(in_prefit[:, None], self.prefit_labels, self.train_labels[None, :])
        self.model.train()
        if self.config.range_tracking == "epoch":
            self.model.reset_ranges()
        for start in range(0, n_train, self.config.batch_size):
            batch = orders[:, start : start + self.config.batch_size]
            batch, size = _pad_to_lanes(batch, dim=1)
            result = self.model(self.x_train[batch], valid=size)
            targets = labels.gather(1, batch[:, :size])
            nll = -result.log_probs[:, :size].gather(2, targets.unsqueeze(-1)).squeeze(-1)
            nll.mean(dim=1).sum().backward()  # seeds are independent: their losses just add up
            self._adam()
        for slot, is_active in enumerate(active):
            if is_active:
                self.slot_epoch[slot] += 1

    # -- measuring --------------------------------------------------------------------------
    @torch.no_grad()
    def _forward_all(self, model: BatchedNetwork):
        """The whole data set through the network, ranges held fixed, in chunks."""
        model.eval()
        parts = []
        for start in range(0, len(self.x), self._eval_chunk):
            chunk, size = _pad_to_lanes(self.x[start : start + self._eval_chunk])
            parts.append(model(chunk))
            if len(chunk) > size:
                result = parts[-1]
                parts[-1] = Pass(
                    result.log_probs[:, :size],
                    [v[:, :size] for v in result.values],
                    [c[:, :size] if c is not None else None for c in result.codes],
                )

        def joined(pieces: list[torch.Tensor]) -> torch.Tensor:
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

        layers = range(len(model.layers))
        log_probs = joined([p.log_probs for p in parts])
        values = [joined([p.values[i] for p in parts]) for i in layers]
        codes = [joined([p.codes[i] for p in parts]) for i in layers] if model.quantized else None
        return log_probs, values, codes

    def _metrics(self, log_probs: torch.Tensor) -> dict[str, np.ndarray]:
        out = {}
        for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
            lp = log_probs[:, idx]
            labels = self.y_device[idx]
            nll = -lp.gather(2, labels.expand(lp.shape[0], -1).unsqueeze(-1)).squeeze(-1)
            out[f"{split}_loss"] = nll.mean(dim=1).double().cpu().numpy()
            out[f"{split}_acc"] = (lp.argmax(dim=2) == labels).double().mean(dim=1).cpu().numpy()
        return out

    def _axes(self, slots: list[int], repeat: int = 1) -> dict[str, list]:
        config = self.config
        phases = [self.phase_epoch(self.slot_epoch[s]) for s in slots]
        n = len(slots) * repeat
        return {
            "sweep": [self.sweep] * n,
            "trial": [self.trial] * n,
            "dataset": [config.dataset] * n,
            "architecture": [config.architecture] * n,
            "activation": [config.activation] * n,
            "bits": [config.bits] * n,
            "seed": [self.seeds[s] for s in slots for _ in range(repeat)],
            "restarts": [self.restarts[s] for s in slots for _ in range(repeat)],
            "phase": [phases[i][0] for i in range(len(slots)) for _ in range(repeat)],
            "epoch": [phases[i][1] for i in range(len(slots)) for _ in range(repeat)],
        }

    def measure(self, slots: list[int]) -> Measurement:
        """Metrics and per-layer MI rows of the given slots at their current epoch.

        The network's state is copied now; the forward pass and the counting run on the
        worker thread, at most two measurements behind the training.
        """
        keys = [(self.seeds[s], self.restarts[s]) for s in slots]
        bounds = None
        if self.measure_mi and self.global_ranges is not None:
            bounds = [self.global_ranges[key] for key in keys]
        if len(self.seeds) < _OVERLAP_SEEDS:  # small models: the thread hand-off costs more than it saves
            return Measurement(None, *self._measure_job(slots, keys, self._axes(slots), None, bounds, self.model))
        snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        job = functools.partial(self._measure_job, slots, keys, self._axes(slots), snapshot, bounds)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ibray-measure")
            self._eval_model = copy.deepcopy(self.model)
        self._inflight = [m for m in self._inflight if m._pending is not None and not m._pending.done()]
        while len(self._inflight) >= 2:  # bound the backlog (and its memory)
            self._inflight.pop(0)._settle()
        measurement = Measurement(self._worker.submit(job))
        self._inflight.append(measurement)
        return measurement

    def _measure_job(self, slots, keys, axes, snapshot, global_bounds, model=None) -> tuple[dict, dict]:
        if model is None:
            model = self._eval_model
            model.load_state_dict(snapshot)
        log_probs, values, codes = self._forward_all(model)
        every = slots == list(range(len(self.seeds)))
        index = torch.as_tensor(slots, device=self.device)

        def pick(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if every else tensor[index]

        metrics = {**axes, **{k: v.tolist() for k, v in self._metrics(pick(log_probs)).items()}}
        values = [pick(v) for v in values]
        extremes = [(v.flatten(1).amin(1).double().tolist(), v.flatten(1).amax(1).double().tolist()) for v in values]
        if self.global_ranges is None and self.config.bin_bounds == "global":
            for row, key in enumerate(keys):  # the range pass: remember each run's extremes
                low = min(layer[0][row] for layer in extremes)
                high = max(layer[1][row] for layer in extremes)
                old_low, old_high = self.seen_ranges.get(key, (math.inf, -math.inf))
                self.seen_ranges[key] = (min(low, old_low), max(high, old_high))
        if not self.measure_mi:
            return {}, metrics
        binning = any(binning_bins(e) for e in self.config.estimators)
        layer_values = [v.cpu().numpy() for v in values] if binning or codes is None else None
        layer_codes = [pick(c).to(torch.int32).cpu().numpy() for c in codes] if codes is not None else None
        bounds = [self._bin_bounds(extreme, global_bounds) for extreme in extremes] if binning else None
        mi = mi_rows(self.config.estimators, model.layers, layer_codes, layer_values, bounds, extremes, self.y, axes)
        return mi, metrics

    def _bin_bounds(self, extremes: tuple[list[float], list[float]], global_bounds: list | None):
        """(low, high) of the bins of one layer, broadcastable over (seeds, samples, neurons)."""
        if self.config.bin_bounds == "fixed":
            return self.config.bin_range
        if self.config.bin_bounds == "global" and global_bounds is not None:
            low, high = np.array([b[0] for b in global_bounds]), np.array([b[1] for b in global_bounds])
        else:  # per layer and epoch (the range pass of global bounds bins nothing)
            low, high = np.array(extremes[0]), np.array(extremes[1])
        return low[:, None, None], high[:, None, None]

    def _due(self, slot: int, previous: int) -> bool:
        epoch = self.slot_epoch[slot]
        if epoch == previous:
            return False
        phase, phase_epoch = self.phase_epoch(epoch)
        return (
            epoch % self.config.mi_every == 0
            or epoch == self.total_epochs
            or epoch == self.config.prefit_epochs
            or (phase == "train" and phase_epoch == self.config.restart_epoch)
        )

    def start(self) -> Measurement:
        """Epoch 0 of every slot."""
        return self.measure(list(range(len(self.seeds))))

    def step(self) -> tuple[Measurement, list[tuple[int, int]]]:
        """Train one epoch, measure the slots that are due, restart dead ones.

        Returns the rows and the (seed, restarts) attempts that were discarded.
        """
        before = list(self.slot_epoch)
        self.train_epoch()
        due = [s for s in range(len(self.seeds)) if self._due(s, before[s])]
        measurement = self.measure(due) if due else Measurement()
        discarded = []
        config = self.config
        checking = [s for s in due if self.phase_epoch(self.slot_epoch[s]) == ("train", config.restart_epoch)]
        if checking:  # the only place the loop waits for a measurement
            accuracy = dict(zip(due, measurement.metrics["train_acc"]))
            for slot in checking:
                if (
                    accuracy[slot] < config.min_train_acc
                    and self.restarts[slot] < config.max_restarts
                ):
                    discarded.append((self.seeds[slot], self.restarts[slot]))
                    self.restarts[slot] += 1
                    self._init_slot(slot)
            if discarded:
                measurement = self._drop(measurement, discarded)
                fresh = [s for s in range(len(self.seeds)) if self.slot_epoch[s] == 0]
                measurement.extend(self.measure(fresh))
        return measurement, discarded

    @staticmethod
    def _drop(measurement: Measurement, attempts: list[tuple[int, int]]) -> Measurement:
        tables = []
        for table in (measurement.mi, measurement.metrics):
            keep = [pair not in attempts for pair in zip(table.get("seed", []), table.get("restarts", []))]
            tables.append({k: [v for v, ok in zip(col, keep) if ok] for k, col in table.items()})
        return Measurement(mi=tables[0], metrics=tables[1])

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit; loadable with torch.load(weights_only=True)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "adam_m": [m.cpu().clone() for m in self.adam_m],
            "adam_v": [v.cpu().clone() for v in self.adam_v],
            "adam_step": list(self.adam_step),
            "seeds": list(self.seeds),
            "restarts": list(self.restarts),
            "slot_epoch": list(self.slot_epoch),
            "shufflers": [g.get_state() for g in self.shufflers],
            "prefit_labels": self.prefit_labels.cpu().clone(),
            "trial": self.trial,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("trial") != self.trial or list(state["seeds"]) != self.seeds:
            raise ValueError(
                f"checkpoint belongs to trial {state.get('trial')!r} seeds {state.get('seeds')}, "
                f"not {self.trial!r} seeds {self.seeds}"
            )
        self.model.load_state_dict(state["model"])
        for mine, saved in zip(self.adam_m + self.adam_v, state["adam_m"] + state["adam_v"]):
            mine.copy_(saved)
        self.adam_step = list(state["adam_step"])
        self.restarts = list(state["restarts"])
        self.slot_epoch = list(state["slot_epoch"])
        for gen, saved in zip(self.shufflers, state["shufflers"]):
            gen.set_state(saved)
        self.prefit_labels.copy_(state["prefit_labels"])


# -- one trial, end to end -------------------------------------------------------------------
@dataclass
class TrialSummary:
    out: Path | str  # a local path, or the URI it was given
    trial: str
    seeds: int
    epochs: int
    restarts: dict[int, int]
    seconds: float
    final: dict[str, float]  # mean final train/test accuracy


def needs_global_ranges(config: TrialConfig) -> bool:
    return config.bin_bounds == "global" and any(binning_bins(e) for e in config.estimators)


def find_global_ranges(config: TrialConfig, dataset: Dataset) -> dict[tuple[int, int], tuple[float, float]]:
    """The binning range of each run: min and max over all its layers and epochs.

    Found by training once without measuring MI; training is deterministic, so the measuring
    run that follows goes through the very same states.
    """
    trainer = Trainer(config, dataset, measure_mi=False)
    measurements = [trainer.start()]
    while not trainer.done:
        measurements.append(trainer.step()[0])
    for measurement in measurements:
        measurement.metrics  # wait: the ranges are gathered by the measurements
    return trainer.seen_ranges


def write_trial_info(out: str | Path, trainer: "Trainer", sweep: str, parts: int) -> None:
    """trial.json: the config, the status, and what `ibray verify` checks the rows against:
    the kept attempt of each seed (`restarts`) and the writes so far (`parts`)."""
    config = trainer.config
    info = {
        "sweep": sweep,
        "trial": config.trial_id(),
        "status": "complete" if trainer.done else "running",
        "epochs_run": trainer.epochs_run,
        "parts": parts,
        "restarts": {str(seed): count for seed, count in zip(trainer.seeds, trainer.restarts)},
        "config": config.to_dict(),
    }
    write_text_atomic(json.dumps(info, indent=2), join(out, "trial.json"))


def run_trial(
    config: TrialConfig,
    out: str | Path,
    sweep: str = "",
    data_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    state: dict | None = None,
    on_write: Callable[[dict, dict], None] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    progress_every: float = PROGRESS_EVERY_S,
) -> TrialSummary:
    """Train config's seeds, writing Parquet every `write_every` epochs under `out`.

    `out` is a local path or a filesystem URI (s3://..., gs://..., file://...).
    on_write(checkpoint, scalars) runs right after each write: `checkpoint` continues the run
    via run_trial(state=checkpoint); `scalars` are a few numbers for a progress report.
    on_progress(progress) runs every `progress_every` seconds, whatever the write cadence, with
    the slowest seed's `epoch` and the trial's `seed_epochs_done` and `seed_epochs_left` (the
    latter counts the whole remaining run of restarted seeds).
    """
    started = time.perf_counter()
    out = out if is_uri(out) else Path(out)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir, config.train_fraction, config.split_seed)
    if state is not None:
        ranges = state.get("global_ranges")
        ranges = {(int(s), int(r)): (lo, hi) for s, r, lo, hi in ranges} if ranges else None
    else:
        ranges = find_global_ranges(config, dataset) if needs_global_ranges(config) else None
    trainer = Trainer(config, dataset, sweep, global_ranges=ranges)
    remove_temporaries(out)
    writer = ResultsWriter(out)
    parts = 0  # writes so far: names the next part, so no two writes share a name
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        if "parts" in state:
            parts = int(state["parts"])
            writer.remove_parts_after(parts)
        else:  # a checkpoint of the older naming: its parts stay, new ones cannot collide
            parts = len(list_parts(join(out, "mi")))
    else:
        writer.remove_parts_after(0)
        writer.add(trainer.start())
    # (a run resumed from its final checkpoint has nothing left to do but say so)
    write_trial_info(out, trainer, sweep, parts)

    def checkpoint() -> dict:
        packed = [[s, r, lo, hi] for (s, r), (lo, hi) in ranges.items()] if ranges else None
        # "written": the epoch of the last write, for progress reports of a resumed run
        return {"trainer": trainer.state_dict(), "parts": parts, "written": trainer.epochs_run, "global_ranges": packed}

    last: Measurement | None = None
    last_progress = time.monotonic()
    while not trainer.done:
        measurement, discarded = trainer.step()
        for seed, restarts in discarded:
            writer.drop_seed(seed, restarts)
        writer.add(measurement)
        if not measurement.empty:
            last = measurement
        step = trainer.epochs_run
        if step % config.write_every == 0 or trainer.done:
            parts += 1
            writer.flush(parts, step)
            write_trial_info(out, trainer, sweep, parts)
            if on_write is not None:
                on_write(checkpoint(), _scalars(last, step, config.estimators[0]))
        elif on_progress is not None and time.monotonic() - last_progress >= progress_every:
            last_progress = time.monotonic()
            on_progress(trainer.progress())
    return TrialSummary(
        out=out,
        trial=trainer.trial,
        seeds=len(trainer.seeds),
        epochs=trainer.epochs_run,
        restarts={seed: r for seed, r in zip(trainer.seeds, trainer.restarts) if r},
        seconds=time.perf_counter() - started,
        final=_scalars(last, trainer.epochs_run, config.estimators[0]),
    )


def _scalars(last: Measurement | None, epoch: int, estimator: str) -> dict[str, float]:
    """A few numbers for progress reports: mean accuracies and losses over the seeds of the
    latest measurement, and the output layer's I(X;T), I(T;Y) by `estimator`."""
    scalars: dict[str, float] = {"epoch": epoch}
    if last is None:
        return scalars
    for key in ("train_acc", "test_acc", "train_loss", "test_loss"):
        if last.metrics.get(key):
            scalars[key] = float(np.mean(last.metrics[key]))
    mi = last.mi
    if mi:
        output = max(mi["layer"])
        rows = [i for i, (layer, e) in enumerate(zip(mi["layer"], mi["estimator"])) if layer == output and e == estimator]
        for key in ("mi_xt", "mi_ty"):
            scalars[key] = float(np.mean([mi[key][i] for i in rows]))
    return scalars


# -- resumable trials on disk ----------------------------------------------------------------
CHECKPOINT_FILE = "checkpoint.pt"


class TrialStateError(RuntimeError):
    """A results folder or checkpoint that cannot be continued; the message says why."""


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomically replace `path` with the checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint without executing pickled code (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise TrialStateError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {str(error)[:200]}); "
            f"delete it to restart the trial from scratch"
        ) from error


def read_trial_info(out: str | Path) -> dict | None:
    """The trial.json of a trial folder (path or URI); None when there is none."""
    where = join(out, "trial.json")
    try:
        text = read_text(where)
        return None if text is None else json.loads(text)
    except (OSError, ValueError) as error:
        raise TrialStateError(f"{where} is unreadable ({error}); move the folder aside or pick another --out") from error


def run_resumable(
    config: TrialConfig,
    out: str | Path,
    sweep: str = "",
    data_dir: str | Path | None = None,
    overwrite: bool = False,
    on_write: Callable[[dict, dict], None] | None = None,
) -> TrialSummary | None:
    """Run a trial in `out`, continuing from `out/checkpoint.pt` if an earlier run stopped.

    Returns None when `out` already holds this trial, complete (nothing is redone).
    """
    out = Path(out)
    dataset = load_dataset(config.dataset, data_dir, config.train_fraction, config.split_seed)
    info = read_trial_info(out)
    state = None
    if info is not None and not overwrite:
        if info.get("trial") != config.trial_id():
            raise TrialStateError(
                f"{out} holds results of trial {info.get('trial')!r}, not {config.trial_id()!r}; "
                f"pick another --out (or pass --overwrite to replace them)"
            )
        if info.get("status") == "complete":
            return None
        if (out / CHECKPOINT_FILE).exists():
            state = load_checkpoint(out / CHECKPOINT_FILE)
    elif info is not None and overwrite:
        import shutil

        for name in ("mi", "metrics", CHECKPOINT_FILE, "trial.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def write(checkpoint: dict, scalars: dict) -> None:
        save_checkpoint(checkpoint, out / CHECKPOINT_FILE)
        if on_write is not None:
            on_write(checkpoint, scalars)

    return run_trial(config, out, sweep=sweep, dataset=dataset, state=state, on_write=write)
