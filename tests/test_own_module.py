"""Own PyTorch modules by import path (ibray.module_names, ibray.own_module, models.ModuleNetwork):
the value's grammar, pinning, the one-line errors, seeds that stay independent, checkpoints,
the known answer (the study's bottleneck2 as an nn.Sequential), the DPI across a CNN's layers,
and `ibray trial` / `ibray verify` end to end. The modules are in tests/own_nets.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ibray.cli import main
from ibray.config import TrialConfig, layer_count
from ibray.dataset import Dataset, stratified_split
from ibray.errors import ConfigError
from ibray.models import ModuleNetwork, batched_network
from ibray.module_pin import pin_module
from ibray.trainer import Trainer

NETS = Path(__file__).with_name("own_nets.py")


def pinned(factory: str, path: Path = NETS, **fields) -> TrialConfig:
    return pin_module(TrialConfig(architecture=f"{path}:{factory}", **fields))


def seeded(architecture: str, seeds: int, inputs: int = 12, classes: int = 2, **options) -> ModuleNetwork:
    net = batched_network(architecture, "tanh", inputs, classes, bits=options.pop("bits", 8), seeds=seeds, **options)
    for slot in range(seeds):
        net.init_slot(slot, torch.Generator().manual_seed(slot))
    return net


# -- the value, the config, pinning ------------------------------------------------------------
def test_an_import_path_is_checked_by_its_grammar_without_importing_anything():
    config = TrialConfig(architecture="nets.py:lenet5")
    assert config.architecture.endswith("/nets.py:lenet5") and Path(config.architecture.split(":")[0]).is_absolute()
    assert TrialConfig(architecture="mypkg.nets:lenet5").architecture == "mypkg.nets:lenet5"
    for bad in ("nets.py:5x", "my pkg:lenet5", "my/nets.txt:lenet5"):
        with pytest.raises(ConfigError, match="^architecture: "):
            TrialConfig(architecture=bad)
    with pytest.raises(ConfigError, match="^measure: .* built in"):
        TrialConfig(measure=("fc1",))
    with pytest.raises(ConfigError, match="^activation: 'relu' does not apply"):
        TrialConfig(architecture="nets.py:lenet5", activation="relu")
    with pytest.raises(ConfigError, match="not pinned"):
        config.trial_id()


def test_pinning_appends_the_files_hash_and_the_id_names_the_module():
    config = pinned("mlp_batch_norm")
    assert config.architecture.startswith(f"{NETS}:mlp_batch_norm@") and len(config.architecture.rsplit("@")[1]) == 64
    assert pin_module(config) == config  # pinned once
    assert config.architecture_label.startswith("own_nets.py:mlp_batch_norm@")
    assert "-own_nets.py-mlp_batch_norm-" in config.trial_id()
    assert layer_count(config.architecture) is None and layer_count(config.architecture, ("1", "2")) == 3
    # measure enters the id only when it departs from its default (the ids of older configs stay)
    assert pinned("mlp_batch_norm", measure=("2", "4")).trial_id() != config.trial_id()
    assert TrialConfig().trial_id() == TrialConfig(measure=()).trial_id()


def test_an_importable_module_is_pinned_by_its_source_file(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(NETS, package / "nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = pin_module(TrialConfig(architecture="mypkg.nets:mlp_batch_norm"))
    assert config.architecture.startswith("mypkg.nets:mlp_batch_norm@")
    assert seeded(config.architecture, 1).layers[0].name == "2"


# -- one line for each way it goes wrong --------------------------------------------------------
@pytest.mark.parametrize(
    "factory, fields, message",
    [
        ("missing", {}, r"^architecture: .*own_nets.py has no factory 'missing'; it defines .*bottleneck2"),
        ("raises", {}, r"^architecture: own_nets.py:raises@\w+: the factory raised RuntimeError: no network today$"),
        ("not_a_module", {}, r"the factory returned a str, not a torch.nn.Module"),
        (
            "mlp_batch_norm",
            {"measure": ("fc9",)},
            r"^measure: 'fc9' is not a submodule of own_nets.py:mlp_batch_norm@\w+; its submodules: 0, 1, 2",
        ),
        ("no_activation_module", {}, r"^measure: .* has no activation module"),
        ("with_dropout", {}, r"^architecture: .* holds dropout \(2\)"),
    ],
)
def test_a_module_that_cannot_be_built_is_refused_in_one_line(factory, fields, message):
    with pytest.raises(ConfigError, match=message) as error:
        pinned(factory, **fields)
    assert "\n" not in str(error.value)


def test_a_missing_file_or_module_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^architecture: file .*nowhere.py not found"):
        pinned("lenet5", tmp_path / "nowhere.py")
    with pytest.raises(ConfigError, match=r"^architecture: module 'no_such_package_here' not found"):
        pin_module(TrialConfig(architecture="no_such_package_here:lenet5"))
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"^architecture: importing .*broken.py failed: ModuleNotFoundError"):
        pinned("lenet5", broken)


@pytest.mark.parametrize(
    "factory, message",
    [
        (
            "three_logits",
            r"^architecture: .* returns logits of shape \(2, 3\) for inputs \(2, 12\); the data set has 2 classes",
        ),
        ("wrong_inputs", r"^architecture: .* rejects inputs of shape \(2, 12\) .*RuntimeError: mat1 and mat2"),
        ("shared_relu", r"^measure: '1' runs 2 times in .*'s forward pass"),
    ],
)
def test_a_module_that_does_not_fit_the_data_is_refused_in_one_line(factory, message):
    with pytest.raises(ConfigError, match=message) as error:
        seeded(pinned(factory).architecture, 1)
    assert "\n" not in str(error.value)


def test_a_changed_file_is_refused_in_one_line(tmp_path):
    own = tmp_path / "nets.py"
    shutil.copy(NETS, own)
    config = pinned("mlp_batch_norm", own)
    own.write_text(own.read_text() + "\n# edited\n")
    with pytest.raises(ConfigError, match=r"^architecture: .*nets.py has changed since it was pinned") as error:
        seeded(config.architecture, 1)
    assert "\n" not in str(error.value)


def test_a_pinned_file_is_found_by_its_name_where_a_ray_worker_unpacks_it(tmp_path, monkeypatch):
    config = pinned("mlp_batch_norm")
    moved = tmp_path / "working_dir"
    moved.mkdir()
    shutil.copy(NETS, moved / "own_nets.py")
    monkeypatch.chdir(moved)
    gone = config.architecture.replace(str(NETS), str(tmp_path / "elsewhere" / "own_nets.py"))
    assert seeded(gone, 1).layers[0].name == "2"


# -- the engine ---------------------------------------------------------------------------------
# A module the seed-grouped plan takes (a Sequential of known layers) runs all seeds at once;
# `looped` forces the per-seed loop on it, the path of every other module.
def looped(net: ModuleNetwork) -> ModuleNetwork:
    net._plan = None
    return net


CUSTOM = """
import torch
from torch import nn


class Halve(nn.Module):
    def forward(self, x):
        return x / 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.act = nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh()
        self.fc2, self.relu, self.out = nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.relu(self.fc2(self.act(self.bn(self.fc1(torch.flatten(x, 1)))))))


def custom_forward():
    return Net()


def custom_layer():
    return nn.Sequential(nn.Linear(12, 8), Halve(), nn.Tanh(), nn.Linear(8, 2))


def plain():
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))
"""


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("custom") / "custom_nets.py"
    path.write_text(CUSTOM)
    return path


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("tracking", ["epoch", "moving_average", "batch"])
def test_a_seeds_numbers_do_not_depend_on_its_batch_mates(tracking, grouped):
    # batch norm in training mode, quantizer ranges and the padding cut off: each per seed,
    # whether the seeds run grouped or one after the other
    architecture = pinned("mlp_batch_norm").architecture
    torch.manual_seed(0)
    x = torch.rand(3, 48, 12)

    def path(net: ModuleNetwork) -> ModuleNetwork:
        return net if grouped else looped(net)

    together = path(seeded(architecture, 3, tracking=tracking)).train()
    assert together.grouped == grouped
    for _ in range(2):
        shared = together(x, valid=40)
    for slot in range(3):
        alone = path(batched_network(architecture, "tanh", 12, 2, bits=8, seeds=1, tracking=tracking))
        alone.init_slot(0, torch.Generator().manual_seed(slot))
        alone.train()
        for _ in range(2):
            result = alone(x[slot : slot + 1], valid=40)
        assert torch.equal(result.log_probs[0], shared.log_probs[slot])
        assert all(torch.equal(a[0], b[slot]) for a, b in zip(result.codes, shared.codes))
        assert torch.equal(alone.state0[0], together.state0[slot])  # batch norm's running mean
        assert torch.equal(alone.state1[0], together.state1[slot])
        # the measuring pass: inputs shared by all seeds, running statistics
        alone.eval(), together.eval()
        a, b = alone(x[0]), together(x[0])
        assert torch.equal(a.log_probs[0], b.log_probs[slot])
        assert all(torch.equal(p[0], q[slot]) for p, q in zip(a.codes, b.codes))
        together.train()


@pytest.mark.parametrize("grouped", [True, False])
def test_the_padding_is_never_seen(grouped):
    """Batch norm's statistics and the quantizers' ranges see the first `valid` samples only."""
    architecture = pinned("mlp_batch_norm").architecture
    torch.manual_seed(0)
    x = torch.rand(2, 48, 12)
    other = x.clone()
    other[:, 40:] = torch.rand(2, 8, 12) * 100
    results, nets = [], []
    for inputs in (x, other):
        net = seeded(architecture, 2)
        if not grouped:
            looped(net)
        net.train()
        results.append(net(inputs, valid=40))
        nets.append(net)
    a, b = results
    assert torch.equal(a.log_probs[:, :40], b.log_probs[:, :40])
    assert all(torch.equal(p[:, :40], q[:, :40]) for p, q in zip(a.codes, b.codes))
    assert torch.equal(nets[0].state1, nets[1].state1)  # running variance
    assert all(torch.equal(p.low, q.low) and torch.equal(p.high, q.high) for p, q in zip(*(n.quantizers for n in nets)))


@pytest.mark.parametrize("factory, grouped", [("mlp_batch_norm", True), ("bottleneck2", True), ("small_cnn", False)])
def test_a_sequential_of_known_layers_runs_its_seeds_grouped(factory, grouped):
    architecture = pinned(factory).architecture
    shape = {"bottleneck2": (784, 10, None), "small_cnn": (64, 3, (8, 8))}.get(factory, (12, 2, None))
    net = batched_network(architecture, "tanh", shape[0], shape[1], bits=8, seeds=2, image_shape=shape[2])
    assert net.grouped == grouped


def test_the_grouped_seeds_compute_what_the_loop_does():
    """The seed-grouped plan against the per-seed loop on the same seeds, two training steps and
    the measuring pass: the same codes, batch norm's statistics and values to within float32
    rounding (the products sum in another order)."""
    architecture = pinned("mlp_batch_norm").architecture
    torch.manual_seed(1)
    x = torch.rand(3, 48, 12)
    grouped, loop = seeded(architecture, 3).train(), looped(seeded(architecture, 3)).train()
    assert grouped.grouped and not loop.grouped
    for _ in range(2):
        a, b = grouped(x, valid=40), loop(x, valid=40)
    grouped.eval(), loop.eval()
    c, d = grouped(x[0]), loop(x[0])
    for p, q in [(a.log_probs[:, :40], b.log_probs), (c.log_probs, d.log_probs)]:
        torch.testing.assert_close(p, q, atol=2e-6, rtol=0)
    for p, q in [*zip(a.codes, b.codes), *zip(c.codes, d.codes)]:
        assert (p[:, : q.shape[1]] != q).float().mean() <= 1e-3 and (p[:, : q.shape[1]] - q).abs().max() <= 1
    for number in range(3):
        torch.testing.assert_close(getattr(grouped, f"state{number}"), getattr(loop, f"state{number}"))
    for p, q in zip(grouped.quantizers, loop.quantizers):
        torch.testing.assert_close(p.low, q.low, atol=2e-6, rtol=0)
        torch.testing.assert_close(p.high, q.high, atol=2e-6, rtol=0)


@pytest.mark.parametrize("factory", ["custom_forward", "custom_layer"])
def test_a_module_the_plan_cannot_take_runs_seed_after_seed(custom, factory):
    """Any forward code (torch.flatten, a module of one's own) runs by the per-seed loop, each
    seed as its module alone computes it, whatever its batch mates."""
    architecture = pinned(factory, custom).architecture
    torch.manual_seed(2)
    x = torch.rand(3, 48, 12)
    together = seeded(architecture, 3).train()
    assert not together.grouped
    shared = together(x, valid=40)
    for slot in range(3):
        alone = seeded(architecture, 1).train()
        alone.init_slot(0, torch.Generator().manual_seed(slot))
        result = alone(x[slot : slot + 1], valid=40)
        assert torch.equal(result.log_probs[0], shared.log_probs[slot])
        assert all(torch.equal(p[0], q[slot]) for p, q in zip(result.codes, shared.codes))
    # the same numbers as the plain Sequential's (x / 2 feeds tanh half of what fc1 gives:
    # its weights halved do the same), run grouped
    if factory == "custom_layer":
        plain = seeded(pinned("plain", custom).architecture, 3)
        assert plain.grouped
        with torch.no_grad():
            plain.flat.copy_(together.flat)
            for slot in range(3):
                tensors = plain._seed_tensors(slot)
                tensors["0.weight"].div_(2), tensors["0.bias"].div_(2)
        plain.train()(x, valid=40)
        together.train()(x, valid=40)
        a, b = plain.eval()(x[0]), together.eval()(x[0])
        torch.testing.assert_close(a.log_probs, b.log_probs, atol=2e-6, rtol=0)
        assert all((p != q).float().mean() <= 1e-3 for p, q in zip(a.codes, b.codes))


def test_the_module_is_initialised_from_the_seeds_own_stream():
    architecture = pinned("mlp_batch_norm").architecture
    first, second = seeded(architecture, 2), seeded(architecture, 2)
    assert torch.equal(first.flat, second.flat)
    assert not torch.equal(first.flat[0], first.flat[1])


def test_a_checkpoint_round_trips():
    architecture = pinned("mlp_batch_norm").architecture
    x = torch.rand(2, 32, 12)
    net = seeded(architecture, 2).train()
    net(x)
    copy = batched_network(architecture, "tanh", 12, 2, bits=8, seeds=2)
    copy.load_state_dict(net.state_dict())
    a, b = net.eval()(x), copy.eval()(x)
    assert torch.equal(a.log_probs, b.log_probs) and all(torch.equal(p, q) for p, q in zip(a.codes, b.codes))


def test_bottleneck2_as_a_sequential_gives_the_built_in_networks_codes():
    """Given the built-in network's weights, the module's codes are the built-in's. Its values
    agree to within 2e-6, not bit for bit: nn.Linear multiplies samples-major, the dense engine
    features-major, so the float sums run in another order (a float32 step or two), which can
    move a quantizer's range by as much. Exact MI counts codes, so its rows are the same."""
    architecture = pinned("bottleneck2", dataset="mnist").architecture
    torch.manual_seed(0)
    x = torch.rand(1000, 784) * (torch.rand(1000, 784) > 0.7)  # sparse, as MNIST
    dense = batched_network("bottleneck2", "relu", 784, 10, bits=8, seeds=2)
    own = batched_network(architecture, "relu", 784, 10, bits=8, seeds=2)
    for slot in range(2):
        dense.init_slot(slot, torch.Generator().manual_seed(slot))
        tensors = own._seed_tensors(slot)
        with torch.no_grad():
            for number, (weight, bias) in enumerate(zip(dense.weights, dense.biases)):
                tensors[f"{2 * number}.weight"].copy_(weight[slot].T)
                tensors[f"{2 * number}.bias"].copy_(bias[slot].view(-1))
    assert [spec.width for spec in own.layers] == [spec.width for spec in dense.layers]
    dense.train()(x)
    own.train()(x)  # the ranges
    expected, got = dense.eval()(x), own.eval()(x)
    for a, b in zip(expected.codes, got.codes):
        assert (a != b).float().mean() <= 1e-3 and (a - b).abs().max() <= 1  # on this machine: all equal
    for a, b in zip(expected.values, got.values):
        torch.testing.assert_close(b, a, atol=2e-6, rtol=0)
    torch.testing.assert_close(got.log_probs, expected.log_probs, atol=2e-6, rtol=0)


def image_dataset(samples: int = 240) -> Dataset:
    """8x8 one-channel images of three classes: a bright square in one of three places."""
    rng = np.random.default_rng(0)
    y = np.arange(samples) % 3
    images = rng.random((samples, 8, 8)).astype(np.float32) * 0.3
    for row, label in enumerate(y):
        images[row, 2 * label : 2 * label + 3, 2:5] += 0.7
    train, test = stratified_split(y, 0.8, 0)
    return Dataset(
        "tiny-images", images.reshape(samples, 64), y.astype(np.int64), train, test, n_classes=3, image_shape=(8, 8)
    )


def test_exact_mi_obeys_the_dpi_across_a_cnns_measured_layers():
    config = pinned("small_cnn", seeds=(0, 1), epochs=3, bits=4, learning_rate=1e-2, batch_size=32)
    trainer = Trainer(config, image_dataset(), threads=1)
    assert [spec.name for spec in trainer.model.layers] == ["act1", "act2", "act3", "output"]
    measurements = [trainer.start()] + [trainer.step()[0] for _ in range(3)]
    for measurement in measurements:
        mi = measurement.mi
        rows = {
            (s, e, layer): (xt, ty)
            for s, e, layer, xt, ty in zip(mi["seed"], mi["epoch"], mi["layer"], mi["mi_xt"], mi["mi_ty"])
        }
        for (seed, epoch, layer), (xt, ty) in rows.items():
            if layer > 1:
                before = rows[(seed, epoch, layer - 1)]
                assert xt <= before[0] + 1e-9 and ty <= before[1] + 1e-9
    assert measurements[-1].metrics["train_acc"][0] > 1 / 3  # it learns


def test_ibray_trial_with_an_own_module_writes_rows_that_verify_accepts(tmp_path, capsys):
    out = tmp_path / "trial"
    args = [
        "trial",
        "--architecture",
        f"{NETS}:mlp_batch_norm",
        "--measure",
        "2,4",
        "--seeds",
        "0-1",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert main(["verify", str(out)]) == 0
    assert "every row once" in capsys.readouterr().out


def test_ibray_trial_refuses_to_resume_with_a_changed_file(tmp_path, capsys):
    own = tmp_path / "nets.py"
    shutil.copy(NETS, own)
    args = ["trial", "--architecture", f"{own}:mlp_batch_norm", "--epochs", "1", "--out", str(tmp_path / "trial")]
    assert main(args) == 0
    own.write_text(own.read_text() + "\n# edited\n")
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "nets.py has changed since its trial was pinned" in error and "\n" not in error
    assert main(["trial", "--architecture", f"{own}:missing", "--out", str(tmp_path / "other")]) == 2
    assert "has no factory 'missing'" in capsys.readouterr().err


def test_a_sweep_takes_the_module_beside_its_file_and_checks_measure(tmp_path):
    from ibray.sweep import load_sweep

    shutil.copy(NETS, tmp_path / "nets.py")
    sweep = tmp_path / "own.yaml"
    sweep.write_text("architecture: nets.py:mlp_batch_norm\nmeasure: [['2'], ['2', '4']]\nepochs: 1\n")
    spec = load_sweep(sweep)
    trials = spec.trials
    assert [t.measure for t in trials] == [("2",), ("2", "4")]
    assert all(t.architecture.startswith(f"{tmp_path}/nets.py:mlp_batch_norm@") for t in trials)
    sweep.write_text("architecture: nets.py:mlp_batch_norm\nmeasure: [fc9]\nepochs: 1\n")
    with pytest.raises(ConfigError, match="measure: 'fc9' is not a submodule"):
        load_sweep(sweep)


def test_a_sweep_folder_finds_the_module_beside_the_sweep_file_it_was_given_in(tmp_path):
    """The sweep folder holds a copy of the sweep file but not the module beside it: resume
    and verify take the module's relative path from where the sweep file was given."""
    from ibray.sweep import load_sweep
    from ibray.sweep_folder import check_existing, read_sweep_file, write_sweep_file
    from ibray.verify import missing_trials

    study, folder = tmp_path / "study", tmp_path / "results" / "own"
    study.mkdir()
    folder.mkdir(parents=True)
    shutil.copy(NETS, study / "nets.py")
    (study / "own.yaml").write_text("name: own\narchitecture: [nets.py:mlp_batch_norm, nets.py:bottleneck2]\n")
    spec = load_sweep(study / "own.yaml")
    write_sweep_file(spec, str(folder))
    assert [t.trial_id() for t in read_sweep_file(folder).trials] == [t.trial_id() for t in spec.trials]
    assert check_existing(spec, str(folder), resume=True, overwrite=False) == {
        t.trial_id(): "absent" for t in spec.trials
    }
    checks = missing_trials(folder)  # neither trial has started: both named as absent, not 'unreadable'
    assert sorted(c.trial for c in checks) == sorted(t.trial_id() for t in spec.trials)
    assert {c.status for c in checks} == {"absent"}


TOO_WIDE = '''
from torch import nn


class Spread(nn.Module):
    """Each of its inputs repeated 2**30 times: 4 inputs make a layer 4,294,967,296 neurons
    wide that costs no memory to build or probe (a view)."""

    def forward(self, x):
        return x.unsqueeze(-1).expand(*x.shape, 2**30)


class First(nn.Module):
    def forward(self, x):
        return x[..., 0]


def too_wide():
    return nn.Sequential(nn.Linear(12, 4), Spread(), First(), nn.ReLU(), nn.Linear(4, 2))
'''


def test_a_layer_too_wide_to_count_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    from ibray.sweep import load_sweep

    (tmp_path / "wide.py").write_text(TOO_WIDE)
    out = tmp_path / "trial"
    args = ["trial", "--architecture", f"{tmp_path}/wide.py:too_wide", "--measure", "1", "--seeds", "0-1"]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and not out.exists()
    # 4,096 samples x 2 seeds x 2**32 neurons x 10 bytes (8 bits: values and codes as float32,
    # the codes as bytes, the counting's copy) = 320 TiB; the 2-wide output adds 147 KiB
    assert error.startswith("ibray: error: measure: layer '1' of wide.py:too_wide@")
    assert "is 4,294,967,296 neurons wide" in error and "4,096 samples x 2 seeds" in error
    assert "320.0 TiB (10 bytes a code), 320.0 TiB with the other measured layers" in error
    assert re.search(r"more than this machine's \d+\.\d [MGT]iB of memory; measure narrower layers", error)
    # a sweep is refused when it is loaded (its grid check builds each module once, at 1 seed)
    (tmp_path / "wide.yaml").write_text("architecture: wide.py:too_wide\nmeasure: ['1']\nbits: 16\nepochs: 1\n")
    with pytest.raises(ConfigError, match=r"4,096 samples x 1 seed at once, 192\.0 TiB \(12 bytes a code\)"):
        load_sweep(tmp_path / "wide.yaml")


def test_the_own_module_bench_runs_on_a_stand_in_and_counts_the_modules_work(capsys):
    from ibray.bench import BOTTLENECK2_MODULE, LENET_MODULE, module_macs, network_macs, own_module_benchmarks

    # the Sequential does the built-in bottleneck2's arithmetic; the CNN's two 5x5 convolutions
    # (24x24x4 outputs of 25 inputs, 8x8x8 of 100) and two dense layers (128 x 32, 32 x 10)
    assert module_macs(BOTTLENECK2_MODULE, (28, 28)) == network_macs("bottleneck2")
    assert module_macs(LENET_MODULE, (28, 28)) == (57600 + 51200 + 4096 + 320, 57600)
    rng = np.random.default_rng(0)
    y = np.arange(160) % 10
    train, test = stratified_split(y, 0.8, 0)
    x = rng.random((160, 784), dtype=np.float32)
    stand_in = Dataset("stand-in", x, y.astype(np.int64), train, test, n_classes=10, image_shape=(28, 28))
    figures = own_module_benchmarks(dataset=stand_in, seeds=2, epochs=2, cnn_epochs=2, peak_size=256)
    for key in ("bottleneck2", "bottleneck2_module", "cnn_module"):
        assert figures[f"{key}_seed_epochs_per_s"] > 0 and figures[f"{key}_of_peak"] > 0
    assert figures["bottleneck2_module_over_built_in"] > 0
    out = capsys.readouterr().out
    assert "times the built-in engine's rate" in out and "nets.py:lenet (LeNet-style CNN, own module)" in out
