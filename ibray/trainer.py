"""The Trainer: a block of seeds trained together as one batched network, epoch by epoch.

Knows nothing of Ray or of files. Each seed occupies a slot, and every slot is independent:
its own initialisation, shuffling and prefit labels (streams derived from (seed, restarts)),
its own Adam steps (`optim.SeedAdam`), its own quantizer ranges and its own epoch counter. A
slot whose training accuracy is below `min_train_acc` at `restart_epoch` is discarded and
re-initialised from a fresh stream (the study's rule for dead ReLU runs), and trains from epoch
0 while the others go on. Measurements (`measure.Measurer`) are taken at the epochs of the
measuring grid: 0, every `mi_every`, the end of each phase and the restart check.

A Trainer keeps at most `threads` CPU threads busy: one trains, and with two or more a second
measures while the next epoch trains (from measure.OVERLAP_SEEDS seeds on); with one, every
measurement runs inline. The conv network's C passes take the second thread while no
measurement is running (the seeds in two halves). The numbers are the same either way, bit
for bit.

Dense networks train through their hand-written backward pass (`DenseNetwork.gradient`) and
Adam's update, one call per mini-batch: with engine 'compiled' that call is compiled
(`device.compiled`); the conv network trains through autograd.
"""

from __future__ import annotations

import numpy as np
import torch

from ibray.config import TrialConfig
from ibray.data import Dataset
from ibray.device import LANES, compiled, pad_to_lanes, pick_device
from ibray.measure import Measurement, Measurer
from ibray.models import batched_network
from ibray.optim import SeedAdam

DEFAULT_THREADS = 2  # one thread trains, one measures: `ibray trial` on a machine of its own


def slot_streams(seed: int, restarts: int) -> tuple[int, int, int]:
    """Independent stream seeds (init, shuffling, prefit labels) of one attempt of a seed."""
    init, shuffle, labels = np.random.SeedSequence([seed, restarts]).generate_state(3)
    return int(init), int(shuffle), int(labels)


class Trainer:
    def __init__(
        self,
        config: TrialConfig,
        dataset: Dataset,
        sweep: str = "",
        global_ranges: dict[tuple[int, int], tuple[float, float]] | None = None,
        measure_mi: bool = True,
        threads: int | None = None,
    ) -> None:
        """`threads`: CPU threads this trainer may keep busy, 1 or more (None: DEFAULT_THREADS)."""
        self.config = config
        self.sweep = sweep
        self.trial = config.trial_id()
        self.device = pick_device(config.device)
        self.threads = threads if threads is not None else DEFAULT_THREADS
        if self.threads < 1:
            raise ValueError(f"threads must be 1 or more, got {self.threads}")
        if self.device.type == "cpu":
            # One intra-op thread whatever the budget: even 50 seeds make small tensors, where
            # intra-op threads cost more hand-offs than they save (measured). A second thread
            # of the budget measures (Measurer's overlap); more cores serve more trials (Ray).
            torch.set_num_threads(1)
        self.total_epochs = config.prefit_epochs + config.epochs
        x = torch.as_tensor(dataset.x, dtype=torch.float32, device=self.device)
        labels = torch.as_tensor(np.asarray(dataset.y, dtype=np.int64), device=self.device)
        self.train_idx = torch.as_tensor(dataset.train_idx, dtype=torch.long, device=self.device)
        test_idx = torch.as_tensor(dataset.test_idx, dtype=torch.long, device=self.device)
        self.train_labels = labels[self.train_idx]
        self.x_train = x[self.train_idx]
        self.measurer = Measurer(
            config, x, labels, self.train_idx, test_idx, global_ranges, measure_mi, overlap=self.threads >= 2
        )
        seeds = len(config.seeds)
        self.model = batched_network(
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
            measure=config.measure,
        ).to(self.device)
        self.optimizer = SeedAdam(list(self.model.parameters()), seeds, config.learning_rate)
        self._train_step = self._dense_step
        if config.engine == "compiled" and self.model.features_major:
            self._train_step = compiled(self._dense_step, "the training step", self.device)
        self.seeds = list(config.seeds)
        self.restarts = [0] * seeds
        self.slot_epoch = [0] * seeds  # epochs completed, prefit included
        self.shufflers = [torch.Generator() for _ in range(seeds)]
        self.prefit_labels = torch.zeros(seeds, len(self.train_idx), dtype=torch.long, device=self.device)
        for slot in range(seeds):
            self._init_slot(slot)
        self.model.calibrate(self.x_train, list(range(seeds)))

    @property
    def seen_ranges(self) -> dict[tuple[int, int], tuple[float, float]]:
        """Each run's activation extremes so far (gathered when global binning bounds are
        asked for but not given: the range pass)."""
        return self.measurer.seen_ranges

    # -- slots ------------------------------------------------------------------------------
    def _init_slot(self, slot: int) -> None:
        """Seed slot `slot`, attempt `restarts[slot]`: fresh weights, optimizer, shuffling and
        prefit labels, at epoch 0 (its quantizer ranges are calibrated by the caller)."""
        init_seed, shuffle_seed, label_seed = slot_streams(self.seeds[slot], self.restarts[slot])
        self.model.init_slot(slot, torch.Generator().manual_seed(init_seed))
        self.optimizer.reset_slot(slot)
        self.slot_epoch[slot] = 0
        self.shufflers[slot].manual_seed(shuffle_seed)
        order = torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(label_seed))
        self.prefit_labels[slot] = self.train_labels[order.to(self.device)]

    def phase_epoch(self, total: int) -> tuple[str, int]:
        """(phase, epoch within the phase) after `total` completed epochs."""
        return self.config.phase_epoch(total)

    @property
    def done(self) -> bool:
        return all(epoch >= self.total_epochs for epoch in self.slot_epoch)

    @property
    def slowest_epoch(self) -> int:
        """Epochs completed by the slowest slot. It falls back when a slot restarts."""
        return min(self.slot_epoch)

    def progress(self) -> dict[str, int]:
        """The slowest slot's epoch, seed-epochs trained by the kept attempts, and seed-epochs
        left (a restarted seed's whole new run included)."""
        return {
            "epoch": self.slowest_epoch,
            "seed_epochs_done": sum(self.slot_epoch),
            "seed_epochs_left": sum(self.total_epochs - epoch for epoch in self.slot_epoch),
        }

    # -- training ---------------------------------------------------------------------------
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
        in_prefit = torch.tensor([epoch < self.config.prefit_epochs for epoch in self.slot_epoch], device=self.device)
        labels = torch.where(in_prefit[:, None], self.prefit_labels, self.train_labels[None, :])
        self.model.train()
        if self.config.range_tracking == "epoch":
            self.model.reset_ranges()
        if self.model.features_major:  # the dense networks: a hand-written backward pass
            seeds, batch_size = len(self.seeds), self.config.batch_size
            labels_epoch = labels.gather(1, orders)
            # Each mini-batch's samples gathered for all seeds at once, into one kept buffer: a
            # whole epoch gathered at once is seeds x the training set (3.8 GB for 20 seeds on
            # MNIST), written to fresh pages every epoch, which took longer than the training.
            # Padding repeats a batch's first sample, as pad_to_lanes does for rows.
            features = self.x_train.shape[1]
            buffer = torch.empty(seeds * (batch_size + -batch_size % LANES) * features, device=self.device)
            for start in range(0, n_train, batch_size):
                indices, size = pad_to_lanes(orders[:, start : start + batch_size], dim=1)
                rows = indices.shape[1]
                x = buffer[: seeds * rows * features].view(seeds * rows, features)
                torch.index_select(self.x_train, 0, indices.reshape(-1), out=x)
                x = x.view(seeds, rows, features)
                self._train_step(x, labels_epoch[:, start : start + size], size, self.optimizer.next_rates())
            self._count_epoch(active)
            return
        # The conv layers' C passes take the measuring thread's share of the budget while it has
        # nothing to do (only this thread starts measurements, so it cannot start mid-epoch)
        spare = self.threads >= 2 and hasattr(self.model, "training_threads")
        buffer = torch.empty(0, device=self.device)
        for start in range(0, n_train, self.config.batch_size):
            if spare:
                self.model.training_threads = 1 if self.measurer.busy else 2
            batch = orders[:, start : start + self.config.batch_size]
            batch, size = pad_to_lanes(batch, dim=1)
            # index_select, not x_train[batch]: advanced indexing copies float by float (14 ms
            # against 4 for a 10-seed MNIST batch of 256, measured; a third of an epoch). Into one
            # kept buffer (each batch's graph is done with it before the next batch is gathered):
            # a fresh 8 MB each batch took a conv epoch's gathering 0.8-1.0 s, not 0.65
            x = buffer.resize_(batch.numel(), self.x_train.shape[1])
            torch.index_select(self.x_train, 0, batch.reshape(-1), out=x)
            result = self.model(x.view(*batch.shape, -1), valid=size)
            targets = labels.gather(1, batch[:, :size])
            nll = -result.log_probs[:, :size].gather(2, targets.unsqueeze(-1)).squeeze(-1)
            nll.mean(dim=1).sum().backward()  # seeds are independent: their losses just add up
            self.optimizer.step()
        self._count_epoch(active)

    def _dense_step(self, x: torch.Tensor, targets: torch.Tensor, valid: int, rates: torch.Tensor) -> None:
        """One mini-batch of a dense network: the hand-written backward pass, then Adam's update
        with per-seed step sizes `rates` (tensors in, nothing out: what engine 'compiled'
        compiles)."""
        self.model.gradient(x, targets, valid)
        self.optimizer.update(rates)

    def _count_epoch(self, active: list[bool]) -> None:
        for slot, is_active in enumerate(active):
            if is_active:
                self.slot_epoch[slot] += 1

    # -- measuring --------------------------------------------------------------------------
    def _axes(self, slots: list[int]) -> dict[str, list]:
        config = self.config
        phases = [self.phase_epoch(self.slot_epoch[s]) for s in slots]
        n = len(slots)
        return {
            "sweep": [self.sweep] * n,
            "trial": [self.trial] * n,
            "dataset": [config.dataset_label] * n,
            "architecture": [config.architecture_label] * n,
            "activation": [config.activation_label] * n,
            "bits": [config.bits] * n,
            "seed": [self.seeds[s] for s in slots],
            "restarts": [self.restarts[s] for s in slots],
            "phase": [phase for phase, _ in phases],
            "epoch": [epoch for _, epoch in phases],
        }

    def measure(self, slots: list[int]) -> Measurement:
        """Metrics and per-layer MI rows of the given slots at their current epoch (the
        network is copied now; the rows may come from the measuring thread later)."""
        keys = [(self.seeds[s], self.restarts[s]) for s in slots]
        return self.measurer.measure(self.model, slots, keys, self._axes(slots))

    def _on_grid(self, slot: int, previous: int) -> bool:
        """Is slot `slot`, which was at epoch `previous` before this step, due a measurement?"""
        epoch = self.slot_epoch[slot]
        return epoch != previous and self.config.measured_at(epoch)

    def start(self) -> Measurement:
        """Epoch 0 of every slot."""
        return self.measure(list(range(len(self.seeds))))

    def step(self) -> tuple[Measurement, list[tuple[int, int]]]:
        """Train one epoch, measure the slots that are due, restart dead ones.

        Returns the rows and the (seed, restarts) attempts that were discarded.
        """
        before = list(self.slot_epoch)
        self.train_epoch()
        due = [s for s in range(len(self.seeds)) if self._on_grid(s, before[s])]
        measurement = self.measure(due) if due else Measurement()
        discarded = []
        config = self.config
        checking = [s for s in due if self.phase_epoch(self.slot_epoch[s]) == ("train", config.restart_epoch)]
        if checking:  # the only place the loop waits for a measurement
            accuracy = dict(zip(due, measurement.metrics["train_acc"]))
            for slot in checking:
                if accuracy[slot] < config.min_train_acc and self.restarts[slot] < config.max_restarts:
                    discarded.append((self.seeds[slot], self.restarts[slot]))
                    self.restarts[slot] += 1
                    self._init_slot(slot)
                    self.model.calibrate(self.x_train, [slot])
            if discarded:
                measurement = measurement.without(discarded)
                fresh = [s for s in range(len(self.seeds)) if self.slot_epoch[s] == 0]
                measurement.extend(self.measure(fresh))
        return measurement, discarded

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit; loadable with torch.load(weights_only=True)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            **self.optimizer.state_dict(),
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
        self.optimizer.load_state_dict(state)
        self.restarts = list(state["restarts"])
        self.slot_epoch = list(state["slot_epoch"])
        for gen, saved in zip(self.shufflers, state["shufflers"]):
            gen.set_state(saved)
        self.prefit_labels.copy_(state["prefit_labels"])
