"""The training loop on real data: DPI, independence of seeds, determinism, prefitting,
restarts of dead seeds, resumption from a checkpoint, binning estimators, every network."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
import torch

from ibray.config import TrialConfig
from ibray.data import Dataset
from ibray.run import find_global_ranges, run_trial
from ibray.trainer import Trainer

FAST = dict(learning_rate=0.01, write_every=2)


def read(out, table="mi") -> pl.DataFrame:
    return pl.read_parquet(f"{out}/{table}/*.parquet")


def run(tmp_path, synthetic, name="run", **overrides) -> pl.DataFrame:
    config = TrialConfig(**{**FAST, **overrides})
    run_trial(config, tmp_path / name, dataset=synthetic)
    return read(tmp_path / name)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_data_processing_inequality_holds_at_every_epoch(tmp_path, synthetic, activation):
    mi = run(tmp_path, synthetic, activation=activation, seeds=(0, 1, 2), epochs=25)
    assert mi.height == 3 * 26 * 6
    wide = mi.sort("layer").group_by("seed", "epoch").agg(pl.col("mi_xt", "mi_ty", "n_states"))
    for row in wide.iter_rows(named=True):
        assert np.all(np.diff(row["mi_xt"]) <= 1e-9), row
        assert np.all(np.diff(row["mi_ty"]) <= 1e-9), row
        assert np.all(np.diff(row["n_states"]) <= 0), row
    assert mi["mi_xt"].max() <= 12.0 + 1e-9
    # training moves the output layer: its I(T;Y) is not flat
    output = mi.filter(pl.col("layer") == 6)
    assert output["mi_ty"].max() - output["mi_ty"].min() > 0.01


def test_a_seed_does_not_depend_on_its_batch_mates(tmp_path, synthetic):
    alone = run(tmp_path, synthetic, "alone", seeds=(3,), epochs=6)
    shared = run(tmp_path, synthetic, "shared", seeds=(1, 3, 5), epochs=6).filter(pl.col("seed") == 3)
    columns = [c for c in alone.columns if c != "trial"]
    key = ["epoch", "layer"]
    assert alone.select(columns).sort(key).equals(shared.select(columns).sort(key))


def test_an_injective_seed_does_not_depend_on_mates_that_are_not(tmp_path, synthetic):
    # ReLU on synthetic12: layer 1 is injective (4096 states) for some seeds and not for
    # others, so the batch's counting cannot take the injective shortcut for all of them.
    shared = run(tmp_path, synthetic, "shared", activation="relu", seeds=tuple(range(8)), epochs=4)
    first_layer = shared.filter(pl.col("layer") == 1)
    injective = first_layer.filter(pl.col("n_states") == 4096)["seed"].unique().to_list()
    merged = first_layer.filter(pl.col("n_states") < 4096)["seed"].unique().to_list()
    assert injective and merged
    columns = [c for c in shared.columns if c != "trial"]
    key = ["epoch", "layer"]
    for seed in (injective[0], merged[0]):
        alone = run(tmp_path, synthetic, f"alone{seed}", activation="relu", seeds=(seed,), epochs=4)
        mine = shared.filter(pl.col("seed") == seed)
        assert alone.select(columns).sort(key).equals(mine.select(columns).sort(key)), seed


def test_same_config_and_seed_give_the_same_numbers(tmp_path, synthetic):
    first = run(tmp_path, synthetic, "a", seeds=(0, 1), epochs=4, prefit_epochs=2)
    second = run(tmp_path, synthetic, "b", seeds=(0, 1), epochs=4, prefit_epochs=2)
    key = ["seed", "phase", "epoch", "layer"]
    assert first.sort(key).equals(second.sort(key))
    assert (
        read(tmp_path / "a", "metrics")
        .sort("seed", "phase", "epoch")
        .equals(read(tmp_path / "b", "metrics").sort("seed", "phase", "epoch"))
    )


def test_prefit_phase_is_recorded_on_its_own(tmp_path, synthetic):
    run(tmp_path, synthetic, seeds=(0,), epochs=3, prefit_epochs=4)
    metrics = read(tmp_path / "run", "metrics").sort("phase", "epoch")
    phases = metrics.group_by("phase").agg(pl.col("epoch").sort()).sort("phase")
    assert phases.to_dict(as_series=False) == {"phase": ["prefit", "train"], "epoch": [[0, 1, 2, 3, 4], [1, 2, 3]]}


def test_dead_seeds_are_rerun_and_their_first_attempts_dropped(tmp_path, synthetic):
    # No seed reaches 100% accuracy in two epochs: every seed restarts at epoch 2 until max_restarts.
    config = TrialConfig(seeds=(0, 1), epochs=4, restart_epoch=2, min_train_acc=1.0, max_restarts=2, write_every=1)
    summary = run_trial(config, tmp_path / "run", dataset=synthetic)
    assert summary.restarts == {0: 2, 1: 2}
    for table, per_epoch in (("mi", 6), ("metrics", 1)):
        rows = read(tmp_path / "run", table)
        assert rows["restarts"].unique().to_list() == [2]
        assert sorted(rows.filter(pl.col("seed") == 0)["epoch"].unique().to_list()) == [0, 1, 2, 3, 4]
        assert rows.height == 2 * 5 * per_epoch
    # a rerun uses a fresh stream: its numbers differ from the first attempt's
    first = run(tmp_path, synthetic, "first", seeds=(0,), epochs=2)
    rerun = read(tmp_path / "run").filter((pl.col("seed") == 0) & (pl.col("epoch") == 2) & (pl.col("layer") == 1))
    assert rerun["t_max"][0] != first.filter((pl.col("epoch") == 2) & (pl.col("layer") == 1))["t_max"][0]


class Crash(Exception):
    pass


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, synthetic):
    config = TrialConfig(seeds=(0, 1), epochs=8, prefit_epochs=2, **FAST)
    run_trial(config, tmp_path / "whole", dataset=synthetic)
    saved = {}

    def crash_after_second_write(checkpoint, scalars):
        if scalars["epoch"] == 4:
            saved["state"] = checkpoint
        if scalars["epoch"] == 6:  # parts up to epoch 6 are written, the checkpoint says 4
            raise Crash

    with pytest.raises(Crash):
        run_trial(config, tmp_path / "resumed", dataset=synthetic, on_write=crash_after_second_write)
    run_trial(config, tmp_path / "resumed", dataset=synthetic, state=saved["state"])
    for table, key in (("mi", ["seed", "phase", "epoch", "layer"]), ("metrics", ["seed", "phase", "epoch"])):
        whole, resumed = read(tmp_path / "whole", table), read(tmp_path / "resumed", table)
        assert resumed.select(key).is_duplicated().sum() == 0
        assert whole.sort(key).equals(resumed.sort(key))


def test_binning_estimators_on_a_float_network(tmp_path, synthetic):
    config = TrialConfig(bits=32, seeds=(0, 1), epochs=3, estimators=("exact", "bin30", "bin100", "bin256"), **FAST)
    run_trial(config, tmp_path / "run", dataset=synthetic)
    mi = read(tmp_path / "run")
    assert sorted(mi["estimator"].unique().to_list()) == ["bin100", "bin256", "bin30", "exact"]
    exact = mi.filter(pl.col("estimator") == "exact")
    # float32 tanh layers are injective on the 4096 inputs: the exact I(X;T) is log2 N
    assert exact.filter(pl.col("layer") == 1)["mi_xt"].min() == pytest.approx(12.0)
    for bins in (30, 100, 256):
        binned = mi.filter(pl.col("estimator") == f"bin{bins}")
        assert (binned["n_states"] <= exact["n_states"].max()).all()
        assert binned.filter(pl.col("layer") == 6)["n_states"].max() <= bins
    # more bins never merge more states
    by = mi.pivot(on="estimator", index=["seed", "epoch", "layer"], values="n_states")
    assert (by["bin30"] <= by["bin256"]).all()

    # global bounds: one range per run, the extremes over all its layers and epochs
    ranges = find_global_ranges(config, synthetic)
    for seed in (0, 1):
        rows = exact.filter(pl.col("seed") == seed)
        assert ranges[(seed, 0)] == pytest.approx((rows["t_min"].min(), rows["t_max"].max()))


@pytest.mark.parametrize("bounds", ["layer", "fixed"])
def test_binning_bounds_per_layer_and_fixed(tmp_path, synthetic, bounds):
    mi = run(
        tmp_path,
        synthetic,
        bits=32,
        seeds=(0,),
        epochs=2,
        estimators=("bin30",),
        bin_bounds=bounds,
        bin_range=(-1.0, 1.0),
    )
    # The output's two softmax units sum to 1, so a pair of bins is nearly fixed by the first:
    # at most 2 states per bin of the first unit; on fixed (-1, 1) bins, [0, 1] spans only 15.
    output = mi.filter(pl.col("layer") == 6)["n_states"]
    assert output.max() <= 2 * (30 if bounds == "layer" else 15)
    assert output.min() > 1


def tiny_mnist(samples=240) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(samples) % 10
    x = (rng.random((samples, 784)) * 0.3 + (np.arange(784)[None, :] % 10 == y[:, None]) * 0.7).astype(np.float32)
    return Dataset("mnist", x, y.astype(np.int64), np.arange(0, 200), np.arange(200, samples), 10, (28, 28))


@pytest.mark.parametrize("bits", [4, 8, 32])
@pytest.mark.parametrize("architecture", ["bottleneck2", "bottleneck4", "hourglass", "4x10", "conv"])
def test_every_mnist_network_trains_and_measures(tmp_path, architecture, bits):
    estimators = ("exact", "bin30") if bits == 32 else ("exact",)
    config = TrialConfig(
        dataset="mnist",
        architecture=architecture,
        activation="relu",
        bits=bits,
        seeds=(0, 1),
        epochs=2,
        batch_size=64,
        estimators=estimators,
    )
    run_trial(config, tmp_path / "run", dataset=tiny_mnist())
    mi = read(tmp_path / "run")
    layers = mi["layer"].max()
    assert mi.height == 2 * 3 * layers * len(estimators)
    assert (mi.filter(pl.col("layer") == layers)["mi_ty"] <= np.log2(10) + 1e-9).all()
    assert (mi["mi_xt"] <= np.log2(240) + 1e-9).all()
    wide = mi.filter(pl.col("estimator") == "exact").sort("layer").group_by("seed", "epoch").agg("n_states")
    assert all(np.all(np.diff(states) <= 0) for states in wide["n_states"].to_list())


def test_a_conv_trainer_gives_the_same_numbers_on_one_thread_and_on_two(monkeypatch):
    # With two threads the conv layers' C passes split the seeds between the training thread and
    # a helper whenever the measuring thread is idle (ibray.conv_kernels._by_seeds): every row
    # and metric equals that of one thread, bit for bit, and the split did happen.
    import threading

    from ibray import conv_kernels
    from ibray.measure import OVERLAP_SEEDS

    if conv_kernels.library() is None:
        pytest.skip("no C compiler: the conv network runs its torch path")
    splits = []
    by_seeds = conv_kernels._by_seeds
    monkeypatch.setattr(
        conv_kernels, "_by_seeds", lambda call, seeds, threads: (splits.append(threads), by_seeds(call, seeds, threads))
    )
    config = TrialConfig(
        dataset="mnist",
        architecture="conv",
        activation="relu",
        seeds=tuple(range(OVERLAP_SEEDS + 1)),
        epochs=3,
        mi_every=1,
        batch_size=32,
    )
    rows = {}
    for threads in (1, 2):
        splits.clear()
        trainer = Trainer(config, tiny_mnist(), threads=threads)
        measurements = [trainer.start()] + [trainer.step()[0] for _ in range(config.epochs)]
        rows[threads] = [(m.mi, m.metrics) for m in measurements]
        # one thread: never split; two: split while the measuring thread was idle
        assert (set(splits) == {1}) if threads == 1 else (2 in splits), splits
    assert any(t.name.startswith("ibray-conv") for t in threading.enumerate())
    assert rows[1] == rows[2]
    assert len(rows[1][-1][0]["seed"]) == (OVERLAP_SEEDS + 1) * 4


def test_trainer_checkpoint_is_loadable_without_pickle(tmp_path, synthetic):
    import torch

    trainer = Trainer(TrialConfig(seeds=(0, 1), epochs=3), synthetic)
    trainer.start()
    trainer.step()
    torch.save(trainer.state_dict(), tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    other = Trainer(TrialConfig(seeds=(0, 1), epochs=3), synthetic)
    other.load_state_dict(state)
    assert other.slot_epoch == [1, 1]
    a, _ = trainer.step()
    b, _ = other.step()
    assert a.mi == b.mi
    with pytest.raises(ValueError, match="checkpoint belongs"):
        Trainer(TrialConfig(seeds=(0, 2), epochs=3), synthetic).load_state_dict(state)


@pytest.mark.parametrize("architecture", ["conv", "bottleneck2"])
def test_an_mnist_seed_does_not_depend_on_its_batch_mates(tmp_path, architecture):
    # bottleneck2: per-batch gathers of each seed's samples, the stacked first layer of a pass
    common = dict(dataset="mnist", architecture=architecture, activation="relu", epochs=3, batch_size=64)
    run_trial(TrialConfig(seeds=(2,), **common), tmp_path / "alone", dataset=tiny_mnist())
    run_trial(TrialConfig(seeds=(0, 1, 2, 3, 4), **common), tmp_path / "shared", dataset=tiny_mnist())
    columns = [c for c in read(tmp_path / "alone").columns if c != "trial"]
    alone = read(tmp_path / "alone").select(columns).sort("epoch", "layer")
    shared = read(tmp_path / "shared").filter(pl.col("seed") == 2).select(columns).sort("epoch", "layer")
    assert alone.equals(shared)


def partial_restart_config(synthetic, **overrides) -> TrialConfig:
    """ReLU seeds of which some, not all, are below the accuracy bar at the restart check.

    The bar is the median training accuracy at `restart_epoch`, measured here, so the premise
    does not hang on a hard-coded number. restart_epoch > 2 x write_every: parts written
    before the restart would be overwritten if part names followed the seeds' epochs."""
    common = {
        **FAST,
        **dict(activation="relu", seeds=tuple(range(6)), epochs=24, mi_every=2, write_every=5, restart_epoch=12),
    }
    probe = Trainer(TrialConfig(**{**common, "epochs": 12, "min_train_acc": 0.0}), synthetic)
    probe.start()
    while not probe.done:
        measurement, _ = probe.step()
    accuracy = sorted(measurement.metrics["train_acc"])
    bar = (accuracy[2] + accuracy[3]) / 2
    assert accuracy[2] < bar < accuracy[3]
    return TrialConfig(**{**common, "min_train_acc": bar, "max_restarts": 1, **overrides})


def assert_every_row_once(out, config: TrialConfig, restarted: dict[int, int]) -> None:
    from ibray.verify import measured_epochs, verify_trial

    grid = measured_epochs(config)
    for table, per_point in (("mi", 6), ("metrics", 1)):
        rows = read(out, table)
        for seed in config.seeds:
            mine = rows.filter(pl.col("seed") == seed)
            assert mine["restarts"].unique().to_list() == [restarted.get(seed, 0)], (table, seed)
            points = sorted(zip(mine["phase"], mine["epoch"]))
            assert points == sorted(p for p in grid for _ in range(per_point)), (table, seed)
    check = verify_trial(out)
    assert check.ok and not check.problems, check.line()


def test_a_partial_restart_keeps_every_row_of_every_seed_exactly_once(tmp_path, synthetic):
    config = partial_restart_config(synthetic)
    summary = run_trial(config, tmp_path / "whole", dataset=synthetic)
    assert 0 < len(summary.restarts) < len(config.seeds), summary.restarts
    assert_every_row_once(tmp_path / "whole", config, summary.restarts)

    # Killed between a write and its checkpoint, after the restart, then resumed from the
    # checkpoint before: the same rows, each once, as the uninterrupted run.
    saved, writes = {}, []

    def crash_after_the_restart(checkpoint, scalars):
        writes.append(scalars["epoch"])
        if len(writes) == 5:  # parts 1-4 predate the restart at epoch 12 of the fast seeds
            raise Crash
        saved["state"] = checkpoint

    with pytest.raises(Crash):
        run_trial(config, tmp_path / "resumed", dataset=synthetic, on_write=crash_after_the_restart)
    assert min(saved["state"]["trainer"]["restarts"]) == 0 < max(saved["state"]["trainer"]["restarts"])
    run_trial(config, tmp_path / "resumed", dataset=synthetic, state=saved["state"])
    assert_every_row_once(tmp_path / "resumed", config, summary.restarts)
    for table, key in (("mi", ["seed", "phase", "epoch", "layer"]), ("metrics", ["seed", "phase", "epoch"])):
        assert read(tmp_path / "whole", table).sort(key).equals(read(tmp_path / "resumed", table).sort(key))


def test_a_measurement_calls_back_once_its_rows_are_ready(synthetic):
    # `ibray bench` times a run's sustained rate by these calls
    from ibray.measure import OVERLAP_SEEDS

    config = TrialConfig(seeds=tuple(range(OVERLAP_SEEDS)), epochs=1, mi_every=1)
    for threads in (1, 2):  # measured inline; on the measuring thread
        trainer = Trainer(config, synthetic, threads=threads)
        measurement = trainer.start()
        calls = []
        measurement.when_done(lambda: calls.append(time.perf_counter()))
        if threads == 1:
            assert len(calls) == 1  # ready already: called at once
        rows = len(measurement.mi["seed"])  # waits for the rows
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:  # the future calls back just after
            time.sleep(0.01)
        assert len(calls) == 1, threads
        assert rows == OVERLAP_SEEDS * len(trainer.model.layers)


def test_a_measurement_counted_on_the_device_equals_one_counted_by_numpy(synthetic):
    # On a GPU the Measurer counts the codes where they are (count_on_device); here the same
    # path runs on CPU tensors and gives the NumPy counting's rows.
    config = TrialConfig(seeds=(0, 1, 2), epochs=3, mi_every=1, learning_rate=0.01)
    trainer = Trainer(config, synthetic, threads=1)
    for _ in range(2):
        trainer.train_epoch()
    assert trainer.measurer.count_on_device is False  # the CPU's default
    by_numpy = trainer.measure([0, 2]).mi
    trainer.measurer.count_on_device = True
    on_device = trainer.measure([0, 2]).mi
    assert on_device.keys() == by_numpy.keys()
    for key in by_numpy:
        if key in ("mi_xt", "mi_ty", "h_t"):
            np.testing.assert_allclose(on_device[key], by_numpy[key], rtol=0, atol=1e-12)
        else:
            assert on_device[key] == by_numpy[key], key
    assert len(by_numpy["seed"]) == 2 * len(trainer.model.layers)


@pytest.mark.parametrize("estimators", [("exact",), ("exact", "bin30")])
@pytest.mark.parametrize("architecture", ["conv", "bottleneck2"])
def test_a_measurement_in_chunks_equals_one_in_a_single_pass(architecture, estimators):
    # A pass over MNIST runs in chunks, joined into kept tensors: the codes as bytes, the
    # values only where an estimator reads them (bin30), else only their extremes, chunk by
    # chunk. Every row equals that of one pass over the whole set (t_min and t_max included).
    config = TrialConfig(
        dataset="mnist", architecture=architecture, activation="relu", seeds=(0, 1), epochs=2, estimators=estimators
    )
    trainer = Trainer(config, tiny_mnist(), threads=1)
    trainer.train_epoch()
    whole = trainer.measure([0, 1]).mi
    trainer.model.eval_chunk = lambda features, limit=8192: 32  # 240 samples: 8 chunks, the last one short
    chunked = trainer.measure([1, 0]).mi
    assert trainer.measurer._buffers and (
        {b.dtype for n, b in trainer.measurer._buffers.items() if n > 0} == {torch.uint8}
        if estimators == ("exact",)
        else torch.float32 in {b.dtype for b in trainer.measurer._buffers.values()}
    )
    order = np.lexsort((whole["layer"], whole["estimator"], whole["seed"]))
    again = np.lexsort((chunked["layer"], chunked["estimator"], chunked["seed"]))
    assert len(whole["seed"]) == 2 * len(trainer.model.layers) * len(estimators)
    for key in whole:
        assert [whole[key][i] for i in order] == [chunked[key][i] for i in again], key
    assert min(whole["t_max"]) > 0 and max(whole["n_states"]) > 1
