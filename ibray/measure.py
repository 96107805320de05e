"""One measurement: the whole data set through the network, turned into metrics and MI rows.

A measurement runs every sample (train and test: MI is over the whole set) through the
network with the quantizer ranges held fixed, reads off each layer's integer codes (or float
values) and hands them to `mutual_information` (exact, bin<n>) or `estimators` (the others),
which know nothing of networks. The rows are columnar, ready for the ResultsWriter.

From OVERLAP_SEEDS seeds on, and when the trial may keep a second thread busy (`overlap`), a
measurement runs on a worker thread, on a copy of the network taken when it was asked for,
while the next epoch trains: torch and numpy release the GIL, so one core trains while the
other measures. At most two measurements are in flight. Without `overlap` every measurement
runs inline, on the training thread: the same rows, one core.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from ibray.config import TrialConfig, binning_bins
from ibray.device import compiled, pad_to_lanes
from ibray.estimators import Settings, estimated_information
from ibray.models import BatchedNetwork
from ibray.mutual_information import bin_codes, device_layer_information, float_codes, layer_information

OVERLAP_SEEDS = 8  # from this many seeds on, measurements run beside the training


class Measurement:
    """The rows of one measurement, columnar; reading `.mi` or `.metrics` waits for them."""

    def __init__(self, pending: Future | None = None, mi: dict | None = None, metrics: dict | None = None) -> None:
        self._pending = pending
        self._mi: dict[str, list] = mi if mi is not None else {}
        self._metrics: dict[str, list] = metrics if metrics is not None else {}

    def wait(self) -> None:
        """Block until the worker thread has produced the rows."""
        if self._pending is not None:
            self._mi, self._metrics = self._pending.result()
            self._pending = None

    def when_done(self, callback) -> None:
        """Call `callback()` once the rows are ready: at once if they are, else from the
        measuring thread when it has produced them."""
        if self._pending is None:
            callback()
        else:
            self._pending.add_done_callback(lambda _: callback())

    @property
    def running(self) -> bool:
        return self._pending is not None and not self._pending.done()

    @property
    def empty(self) -> bool:
        """True for the measurement of an epoch where no seed was due."""
        return self._pending is None and not self._mi and not self._metrics

    @property
    def mi(self) -> dict[str, list]:
        self.wait()
        return self._mi

    @property
    def metrics(self) -> dict[str, list]:
        self.wait()
        return self._metrics

    def extend(self, other: "Measurement") -> None:
        for mine, theirs in ((self.mi, other.mi), (self.metrics, other.metrics)):
            for key, values in theirs.items():
                mine.setdefault(key, []).extend(values)

    def without(self, attempts: list[tuple[int, int]]) -> "Measurement":
        """These rows less those of the given (seed, restarts) attempts."""
        tables = []
        for table in (self.mi, self.metrics):
            keep = [pair not in attempts for pair in zip(table.get("seed", []), table.get("restarts", []))]
            tables.append({k: [v for v, ok in zip(column, keep) if ok] for k, column in table.items()})
        return Measurement(mi=tables[0], metrics=tables[1])


def mi_columns(
    estimators: tuple[str, ...],
    layers: list,
    codes: list[np.ndarray | torch.Tensor] | None,
    values: list[np.ndarray] | None,
    bounds: list | None,
    extremes: list[tuple[list[float], list[float]]],
    labels: np.ndarray,
    axes: dict[str, list],
    tensors: list[torch.Tensor] | None = None,
    settings: Settings | None = None,
) -> dict[str, list]:
    """The MI table of one measurement as columns: a row per estimator, layer and seed, from
    the layers' codes (or float values), binning bounds, extremes and the labels. Codes given
    as torch tensors are counted on their device (`device_layer_information`). The other
    estimators (kde, knn, edge, abin<n>, ...) take the layers' values as `tensors`, on their
    device, with their `settings`."""
    seeds = len(axes["seed"])
    columns: dict[str, list] = {}
    for estimator in estimators:
        for number, spec in enumerate(layers, start=1):
            layer_codes = None
            if estimator == "exact":
                layer_codes = codes[number - 1] if codes is not None else float_codes(values[number - 1])
            elif binning_bins(estimator):
                layer_codes = bin_codes(values[number - 1], binning_bins(estimator), *bounds[number - 1])
            if layer_codes is None:
                info = estimated_information(estimator, tensors[number - 1], labels, settings or Settings())
            elif isinstance(layer_codes, torch.Tensor):
                info = device_layer_information(layer_codes, labels)
            else:
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


def host_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """A layer's integer codes (held as floats, or already as bytes) as the narrowest unsigned
    NumPy integers that hold `bits`-bit codes, in the tensor's memory order (NumPy converts
    faster than torch)."""
    dtype = np.uint8 if bits <= 8 else np.uint16
    if codes.device.type != "cpu":  # convert on the device: a quarter of the bytes to copy
        codes = codes.to(torch.uint8 if bits <= 8 else torch.int32).cpu()
    return codes.numpy().astype(dtype, order="K")


class Measurer:
    """Measures seeds of a network on the whole data set (tensors already on the device).

    With `measure_mi` False only metrics are computed, and with global binning bounds asked
    for but not known yet, each run's extremes are gathered in `seen_ranges` (the range pass).
    `overlap`: whether measurements of OVERLAP_SEEDS seeds or more may run on a second thread.
    """

    def __init__(
        self,
        config: TrialConfig,
        x: torch.Tensor,
        labels: torch.Tensor,
        train_idx: torch.Tensor,
        test_idx: torch.Tensor,
        global_ranges: dict[tuple[int, int], tuple[float, float]] | None = None,
        measure_mi: bool = True,
        overlap: bool = True,
    ) -> None:
        self.config = config
        self.overlap = overlap
        self.x, self.labels, self.train_idx, self.test_idx = x, labels, train_idx, test_idx
        self.labels_host = labels.cpu().numpy()
        # Exact MI counted where the codes are: on a GPU they stay there (only a few numbers per
        # seed and layer come back); on the CPU NumPy counts them.
        self.count_on_device = x.device.type != "cpu"
        self.global_ranges = global_ranges
        self.measure_mi = measure_mi
        self.seen_ranges: dict[tuple[int, int], tuple[float, float]] = {}
        self._worker: ThreadPoolExecutor | None = None
        self._eval_model: BatchedNetwork | None = None  # the worker's copy of the network
        self._inflight: list[Measurement] = []
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> its compiled pass
        # The pass's joined outputs, kept between measurements (one measurement at a time: all
        # run on the one worker thread, or all inline)
        self._buffers: dict = {}

    def measure(self, model: BatchedNetwork, slots: list[int], keys: list[tuple[int, int]], axes: dict) -> Measurement:
        """Metrics and per-layer MI rows of seed `slots` (their (seed, restarts) `keys`, their
        row axes) at the network's current state."""
        bounds = None
        if self.measure_mi and self.global_ranges is not None:
            bounds = [self.global_ranges[key] for key in keys]
        # Small models: the thread hand-off costs more than it saves. Without overlap: the
        # trial has one core, and a second thread would only contend for it.
        if model.seeds < OVERLAP_SEEDS or not self.overlap:
            return Measurement(None, *self._rows(model, slots, keys, axes, bounds))
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ibray-measure")
            self._eval_model = copy.deepcopy(model)
        job = functools.partial(self._rows_of_snapshot, snapshot, slots, keys, axes, bounds)
        self._inflight = [m for m in self._inflight if m.running]
        while len(self._inflight) >= 2:  # bound the backlog (and its memory)
            self._inflight.pop(0).wait()
        measurement = Measurement(self._worker.submit(job))
        self._inflight.append(measurement)
        return measurement

    @property
    def busy(self) -> bool:
        """Is a measurement running (or waiting) on the measuring thread?"""
        return any(measurement.running for measurement in self._inflight)

    def _rows_of_snapshot(self, snapshot, slots, keys, axes, bounds) -> tuple[dict, dict]:
        self._eval_model.load_state_dict(snapshot)
        return self._rows(self._eval_model, slots, keys, axes, bounds)

    def _rows(self, model: BatchedNetwork, slots, keys, axes, global_bounds) -> tuple[dict, dict]:
        config = self.config
        binning = any(binning_bins(e) for e in config.estimators)
        estimated = any(e != "exact" and not binning_bins(e) for e in config.estimators)
        # The layers' values are kept only where an estimator reads them (or a float network's
        # exact count); otherwise only their extremes, per chunk (a conv network's first layer:
        # 0.95 GB of values at 10 seeds on MNIST, never joined)
        keep_values = self.measure_mi and (binning or estimated or not model.quantized)
        log_probs, values, codes, lows, highs = self.forward_all(model, keep_values)
        every = slots == list(range(model.seeds))
        index = torch.as_tensor(slots, device=log_probs.device)

        def pick(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if every else tensor[index]

        metrics = {**axes, **{k: v.tolist() for k, v in self._metrics(pick(log_probs)).items()}}
        values = [pick(v) for v in values] if values is not None else None
        extremes = [(pick(low).double().tolist(), pick(high).double().tolist()) for low, high in zip(lows, highs)]
        if self.global_ranges is None and config.bin_bounds == "global":
            for row, key in enumerate(keys):  # the range pass: remember each run's extremes
                low = min(layer[0][row] for layer in extremes)
                high = max(layer[1][row] for layer in extremes)
                old_low, old_high = self.seen_ranges.get(key, (math.inf, -math.inf))
                self.seen_ranges[key] = (min(low, old_low), max(high, old_high))
        if not self.measure_mi:
            return {}, metrics
        layer_values = [v.cpu().numpy() for v in values] if binning or codes is None else None
        settings = Settings(config.kde_variance, config.knn_k, config.estimator_samples)
        layer_codes = None
        if codes is not None and self.count_on_device:
            layer_codes = [pick(c).to(torch.int32) for c in codes]
        elif codes is not None:
            layer_codes = [host_codes(pick(c), config.bits) for c in codes]
        bounds = None
        if binning:
            bounds = [
                bin_bounds(config.bin_bounds, extreme, global_bounds, config.bin_range, layer)
                for extreme, layer in zip(extremes, layer_values)
            ]
        mi = mi_columns(
            config.estimators,
            model.layers,
            layer_codes,
            layer_values,
            bounds,
            extremes,
            self.labels_host,
            axes,
            tensors=values if estimated else None,
            settings=settings,
        )
        return mi, metrics

    @torch.no_grad()
    def forward_all(self, model: BatchedNetwork, keep_values: bool = True):
        """The whole data set through the network, ranges held fixed, in chunks:
        (log-probabilities, per-layer values or None unless `keep_values`, per-layer codes or
        None for a float network, per-layer minima and maxima of the values, each (seeds,))."""
        model.eval()
        forward = model
        if self.config.engine == "compiled" and model.features_major:
            if model not in self._compiled:
                self._compiled[model] = compiled(model.forward, "the measuring pass", self.x.device)
            forward = self._compiled[model]
        chunk = model.eval_chunk(self.x.shape[1])
        total = len(self.x)
        lows: list[torch.Tensor] = []
        highs: list[torch.Tensor] = []
        # 8-bit codes counted by NumPy are joined as bytes: a quarter of the memory written, and
        # no conversion afterwards (the conv network's first layer: 0.24 GB, not 0.95, at 10 seeds)
        codes_as = torch.uint8 if not self.count_on_device and self.config.bits <= 8 else None
        for start in range(0, total, chunk):
            rows, size = pad_to_lanes(self.x[start : start + chunk])
            part = forward(rows)
            values = [piece.narrow(1, 0, size) for piece in part.values]  # the padding cut off
            # min and max over a chunk, then over the chunks: NaN stays NaN, as over the whole
            chunk_lows = [v.amin(dim=tuple(range(1, v.dim()))) for v in values]
            chunk_highs = [v.amax(dim=tuple(range(1, v.dim()))) for v in values]
            lows = [torch.minimum(a, b) for a, b in zip(lows, chunk_lows)] if lows else chunk_lows
            highs = [torch.maximum(a, b) for a, b in zip(highs, chunk_highs)] if highs else chunk_highs
            kept_values = values if keep_values else []
            codes = [piece.narrow(1, 0, size) for piece in part.codes] if model.quantized else []
            pieces = [(part.log_probs.narrow(1, 0, size), None), *((v, None) for v in kept_values)]
            pieces += [(c, codes_as) for c in codes]
            if size < total:  # several chunks: joined into kept tensors
                joined = [self._joined(n, piece, start, total, dtype) for n, (piece, dtype) in enumerate(pieces)]
            else:
                joined = [piece for piece, _ in pieces]
        log_probs, joined = joined[0], joined[1:]
        values, codes = joined[: len(kept_values)], joined[len(kept_values) :]
        return log_probs, values if keep_values else None, codes if model.quantized else None, lows, highs

    def _joined(self, name, piece: torch.Tensor, start: int, total: int, dtype=None) -> torch.Tensor:
        """`piece` (S, size, ...) copied into samples start..start+size of a kept (S, total, ...)
        tensor laid out as `piece` is (features-major for the dense networks), of `dtype` (None:
        the piece's), which it returns. Kept between measurements: a fresh tensor of this size
        each time (as torch.cat's) costs more in page faults than the copying."""
        shape = (piece.shape[0], total, *piece.shape[2:])
        dtype = dtype or piece.dtype
        kept = self._buffers.get(name)
        if kept is None or kept.shape != shape or kept.dtype != dtype or kept.device != piece.device:
            # the same dimension order in memory as the piece's (strides, largest first)
            order = sorted(range(piece.dim()), key=lambda d: -piece.stride(d))
            kept = torch.empty([shape[d] for d in order], dtype=dtype, device=piece.device)
            kept = kept.permute([order.index(d) for d in range(piece.dim())])
            self._buffers[name] = kept
        kept.narrow(1, start, piece.shape[1]).copy_(piece)
        return kept

    def _metrics(self, log_probs: torch.Tensor) -> dict[str, np.ndarray]:
        """Loss and accuracy of each seed on the training and the test set, from the
        log-probabilities (S, samples, classes) of every sample."""
        by_class = log_probs.transpose(1, 2)  # (S, classes, samples): the dense networks' layout
        labels = self.labels.expand(by_class.shape[0], 1, -1)
        nll = -by_class.gather(1, labels).squeeze(1)
        # max's indices: the first maximal class, as argmax's, which is ten times slower here
        correct = by_class.max(dim=1).indices == labels.squeeze(1)
        out = {}
        for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
            out[f"{split}_loss"] = nll[:, idx].mean(dim=1).double().cpu().numpy()
            out[f"{split}_acc"] = correct[:, idx].double().mean(dim=1).cpu().numpy()
        return out


def bin_bounds(
    mode: str,
    extremes: tuple[list[float], list[float]],
    global_bounds: list | None,
    bin_range: tuple[float, float],
    values: np.ndarray,
):
    """(low, high) of the bins of one layer, broadcastable over its values (seeds, samples,
    neurons), by `bin_bounds`: 'fixed' bin_range; 'global' each run's range over all its layers
    and epochs (`global_bounds`, per seed); 'layer' each seed's extremes of this layer at this
    measurement (`extremes`: per-seed minima and maxima); 'neuron' each neuron's own minimum
    and maximum over the samples, per seed, at this measurement."""
    if mode == "fixed":
        return bin_range
    if mode == "neuron":
        return values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    if mode == "global" and global_bounds is not None:
        low, high = np.array([b[0] for b in global_bounds]), np.array([b[1] for b in global_bounds])
    else:  # per layer and epoch (the range pass of global bounds bins nothing)
        low, high = np.array(extremes[0]), np.array(extremes[1])
    return low[:, None, None], high[:, None, None]
