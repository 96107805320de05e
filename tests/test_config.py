"""The trial config: defaults from the protocol, and one clear error per bad value."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from ibray.config import (
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_WEIGHTS,
    MAX_SEEDS,
    MAX_WIDTH,
    NUMBER_RULES,
    ConfigError,
    DataFile,
    TrialConfig,
    check_sample_shape,
    custom_widths,
    data_file,
    dataset_label,
    parse_seeds,
)
from ibray.data import pin_dataset


def test_defaults_follow_the_protocol():
    config = TrialConfig()
    assert (config.learning_rate, config.batch_size, config.bits) == (1e-4, 256, 8)
    assert (config.min_train_acc, config.restart_epoch, config.mi_every) == (0.55, 1000, 1)
    assert config.init == "truncated_normal" and config.range_tracking == "epoch"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dataset="cifar"), "dataset: unknown value 'cifar'"),
        (dict(architecture="resnet"), "architecture: unknown value 'resnet'"),
        (dict(activation="swish"), "activation: unknown value 'swish'"),
        (dict(estimators=("mine",)), "estimators: unknown estimator 'mine'"),
        (dict(estimators=("bin1",)), "estimators: unknown estimator 'bin1'"),
        (dict(bits=1), "bits: 1 is not allowed"),
        (dict(bits=17), "bits: 17 is not allowed"),
        (dict(bits=24), "bits: 24 is not allowed"),
        (dict(dataset="mnist", architecture="syn"), "architecture: 'syn' does not fit dataset 'mnist'"),
        (dict(architecture="conv"), "architecture: 'conv' does not fit dataset 'synthetic12'"),
        (dict(epochs=-1), "epochs: -1 must be a non-negative integer"),
        (dict(mi_every=0), "mi_every: 0 must be a positive integer"),
        (dict(learning_rate=0), "learning_rate: 0"),
        (dict(seeds="3,1-4"), "seeds: [3] appear more than once"),
        (dict(seeds="a-b"), "seeds: 'a-b' is not a seed"),
        (dict(bin_bounds="neurons"), "bin_bounds: unknown value 'neurons'; allowed: global, layer, neuron, fixed"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig(**overrides)
    assert message in str(error.value)


def test_every_bit_width_from_2_to_16_and_32():
    for bits in list(range(2, 17)) + [32]:
        assert TrialConfig(bits=bits).quantized == (bits != 32)


def test_seeds_parse_and_round_trip():
    assert parse_seeds("0-3,7,9-10") == (0, 1, 2, 3, 7, 9, 10)
    assert parse_seeds(5) == (5,)
    config = TrialConfig(seeds="0-2", estimators=("exact", "bin30"))
    again = TrialConfig.from_dict(config.to_dict())
    assert again == config and again.trial_id() == config.trial_id()
    assert TrialConfig(seeds="0-3").trial_id() != config.trial_id()
    assert TrialConfig(seeds="0-2", write_every=7, estimators=("exact", "bin30")).trial_id() == config.trial_id()


def test_unknown_keys_fail_at_once():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learnign_rate'\]"):
        TrialConfig.from_dict({"learnign_rate": 0.1})


def test_every_float_field_has_a_rule():
    floats = {f.name for f in dataclasses.fields(TrialConfig) if isinstance(f.default, float)}
    assert floats == set(NUMBER_RULES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(learning_rate=float("inf")), "learning_rate: inf is not allowed; give a finite number > 0"),
        (dict(learning_rate=float("nan")), "learning_rate: nan is not allowed; give a finite number > 0"),
        (dict(learning_rate=-1e-4), "learning_rate: -0.0001 is not allowed"),
        (dict(learning_rate=0.0), "learning_rate: 0.0 is not allowed"),
        (dict(learning_rate="fast"), "learning_rate: 'fast' is not allowed"),
        (dict(ema_decay=float("nan")), "ema_decay: nan is not allowed; give a number strictly between 0 and 1"),
        (dict(ema_decay=1.0), "ema_decay: 1.0 is not allowed"),
        (dict(min_train_acc=float("inf")), "min_train_acc: inf is not allowed; give an accuracy in [0, 1]"),
        (dict(min_train_acc=-0.1), "min_train_acc: -0.1 is not allowed"),
        (
            dict(train_fraction=float("-inf")),
            "train_fraction: -inf is not allowed; give a number strictly between 0 and 1",
        ),
        (dict(train_fraction=True), "train_fraction: True is not allowed"),
        (
            dict(bin_range=(float("-inf"), float("inf"))),
            "bin_range: [-inf, inf] is not allowed; give [low, high], two finite numbers",
        ),
        (dict(bin_range=(0.0, float("nan"))), "bin_range: [0.0, nan] is not allowed"),
        (dict(bin_range=("a", 1)), "bin_range: ['a', 1] is not allowed"),
        (dict(bin_range=(1, 2, 3)), "bin_range: [1.0, 2.0, 3.0] is not allowed"),
        (dict(bin_range=(2, 1)), "bin_range: [2.0, 1.0] is not allowed"),
        (dict(estimators=(30,)), "estimators: unknown estimator 30"),
        (dict(seeds=["1"]), "seeds: ['1'] holds something other than integer seeds"),
    ],
)
def test_non_finite_out_of_range_and_mistyped_values_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig(**overrides)
    assert message in str(error.value)


def test_seed_ranges_are_bounded_before_they_are_expanded():
    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS
    with pytest.raises(ConfigError, match=r"seeds: '0-99999999999' gives more than 1,000,000 seeds"):
        parse_seeds("0-99999999999")
    with pytest.raises(ConfigError, match=r"seeds: 1,000,001 seeds; give at most 1,000,000"):
        parse_seeds(list(range(MAX_SEEDS + 1)))


def test_duplicates_are_found_among_many_seeds():
    with pytest.raises(ConfigError, match=r"seeds: \[7, 123456\] appear more than once"):
        parse_seeds([*range(200_000), 123456, 7])


def test_bins_per_neuron_are_a_bin_bounds_value_that_trial_help_explains():
    from ibray.config import field_help

    config = TrialConfig(estimators=("bin30",), bin_bounds="neuron")
    assert config.trial_id() != TrialConfig(estimators=("bin30",), bin_bounds="layer").trial_id()
    assert "per neuron, layer and epoch (neuron: each neuron's bins over its own min/max)" in field_help()["bin_bounds"]


# -- your own networks and data files ------------------------------------------------------------
def test_the_built_in_trial_ids_are_as_before():
    # label_column is not in the digest: results folders made before it existed still match
    assert TrialConfig().trial_id() == "synthetic12-syn-tanh-8b-ce18e8c613"
    assert (
        TrialConfig(dataset="mnist", architecture="conv", bits=4, seeds="0-9").trial_id()
        == "mnist-conv-tanh-4b-741cb9914b"
    )


@pytest.mark.parametrize("dataset", ["synthetic12", "mnist"])
def test_dense_widths_name_a_network_that_fits_every_data_set(dataset):
    config = TrialConfig(dataset=dataset, architecture="10-7-5-4-3")
    assert config.trial_id().startswith(f"{dataset}-10-7-5-4-3-tanh-8b-")
    assert custom_widths("10-7-5-4-3") == (10, 7, 5, 4, 3) and custom_widths("1") == (1,)
    assert TrialConfig(dataset=dataset, architecture="16").architecture == "16"


@pytest.mark.parametrize(
    "architecture, message",
    [
        ("8-0-2", "architecture: '8-0-2' has a layer of width 0; every width must be at least 1"),
        ("8-04-2", "architecture: '8-04-2' has widths with leading zeros; write it as 8-4-2"),
        (
            "8--2",
            "architecture: unknown value '8--2'; allowed: syn, bottleneck2, bottleneck4, hourglass, 4x10, conv, or hidden widths",
        ),
        ("8-4-", "architecture: unknown value '8-4-'"),
        ("-8", "architecture: unknown value '-8'"),
        (
            f"{MAX_WIDTH + 1}-2",
            f"architecture: '{MAX_WIDTH + 1}-2' has a layer of 1,025 neurons; at most 1,024 per layer",
        ),
        (
            "-".join(["2"] * (MAX_HIDDEN_LAYERS + 1)),
            f"has {MAX_HIDDEN_LAYERS + 1} hidden layers; at most {MAX_HIDDEN_LAYERS}",
        ),
        ("1024-1024-1", "architecture: '1024-1024-1' has 1,049,600 weights between hidden layers; at most 1,048,576"),
    ],
)
def test_dense_widths_outside_the_bounds_are_refused_with_the_reason(architecture, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig(architecture=architecture)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_largest_allowed_networks_are_accepted():
    assert custom_widths(f"{MAX_WIDTH}-1-{MAX_WIDTH}") == (MAX_WIDTH, 1, MAX_WIDTH)
    # exactly MAX_HIDDEN_WEIGHTS between the two layers
    assert TrialConfig(architecture=f"{MAX_WIDTH}-{MAX_HIDDEN_WEIGHTS // MAX_WIDTH}").architecture == "1024-1024"
    assert len(custom_widths("-".join(["3"] * MAX_HIDDEN_LAYERS))) == MAX_HIDDEN_LAYERS


def write_table(path, rows: int = 30) -> None:
    path.write_text("a,b,target\n" + "".join(f"{i},{i % 5},{i % 2}\n" for i in range(rows)))


def test_a_data_file_is_pinned_to_its_absolute_path_and_sha256(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "my.npz", x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    sha = hashlib.sha256((tmp_path / "my.npz").read_bytes()).hexdigest()
    named = TrialConfig(dataset="my.npz", architecture="4-2")
    assert named.dataset == f"{tmp_path}/my.npz"  # the config reads no file: not pinned yet
    with pytest.raises(ConfigError, match=r"is not pinned, so the trial has no id yet; pin it first"):
        named.trial_id()
    config = pin_dataset(named)
    assert config.dataset == f"{tmp_path}/my.npz@{sha}"
    assert config.dataset_label == f"my.npz@{sha[:8]}"
    assert config.trial_id().startswith(f"my.npz-{sha[:8]}-4-2-tanh-8b-")
    assert pin_dataset(TrialConfig(dataset="./my.npz", architecture="4-2")) == config  # the same file, however named
    assert pin_dataset(config) is config and pin_dataset(TrialConfig()) == TrialConfig()  # nothing to read
    # a pinned value is taken as it is: a worker or `ibray verify` need not have the file
    (tmp_path / "my.npz").unlink()
    again = TrialConfig.from_dict(config.to_dict())
    assert again == config and again.trial_id() == config.trial_id()


def test_a_tables_label_column_is_part_of_its_pinned_value(tmp_path):
    write_table(tmp_path / "t.csv")
    sha = hashlib.sha256((tmp_path / "t.csv").read_bytes()).hexdigest()
    config = pin_dataset(TrialConfig(dataset=str(tmp_path / "t.csv"), label_column="target"))
    assert config.dataset == f"{tmp_path}/t.csv#target@{sha}"
    assert config.dataset_label == f"t.csv#target@{sha[:8]}"
    assert TrialConfig.from_dict(config.to_dict()) == config
    with pytest.raises(
        ConfigError, match=r"names label column 'target' but label_column is 'label'; give the path alone"
    ):
        TrialConfig(dataset=config.dataset)
    # a .npz has arrays x and y: a sweep's label_column (for its tables) leaves it alone
    np.savez(tmp_path / "n.npz", x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)
    assert "#" not in pin_dataset(TrialConfig(dataset=str(tmp_path / "n.npz"), label_column="target")).dataset


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(dataset="cifar"),
            "dataset: unknown value 'cifar'; allowed: synthetic12, szt, mnist, or a data file (.npz, .parquet, .csv)",
        ),
        (
            dict(dataset="data/table.xlsx"),
            "is a file of unknown type '.xlsx'; give a .npz file (arrays x and y), or a .parquet or .csv file",
        ),
        (dict(dataset="data/"), "is a file without a file type"),
        (dict(label_column="a#b"), "label_column: 'a#b' is not allowed; give a column name without '#' or '@'"),
        (dict(label_column=""), "label_column: '' is not allowed"),
        (
            dict(dataset="mnist", architecture="syn"),
            "for mnist use bottleneck2, bottleneck4, hourglass, 4x10, conv, or hidden widths such as 16-8-4",
        ),
    ],
)
def test_bad_data_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig(**overrides)
    assert message in str(error.value)


def test_conv_on_a_data_file_waits_for_the_files_shape():
    # the config reads no file: conv's need of images is checked once the file is read
    assert TrialConfig(dataset="/d/x.npz@" + "0" * 64, architecture="conv").architecture == "conv"
    check_sample_shape("conv", "mnist", (28, 28))
    check_sample_shape("16-8", "/d/x.npz@" + "0" * 64, (12,))
    with pytest.raises(ConfigError, match=r"^architecture: 'conv' needs images, but x.npz@00000000 holds feature rows"):
        check_sample_shape("conv", "/d/x.npz@" + "0" * 64, (12,))
    with pytest.raises(ConfigError, match=r"at least 10x10 pixels .* holds images of shape \(3, 10, 9\)"):
        check_sample_shape("conv", "/d/x.npz@" + "0" * 64, (3, 10, 9))


def test_data_file_reads_names_paths_and_pinned_values():
    assert data_file("mnist") is None and data_file("cifar") is None and data_file(3) is None
    assert data_file("my.npz") == DataFile("my.npz", None, None)
    assert data_file("d#1.csv") == DataFile("d#1.csv", None, None)  # '#' in a file name stays
    sha = "ab" * 32
    assert data_file(f"/d/t.CSV#y@{sha}") == DataFile("/d/t.CSV", "y", sha)
    assert data_file(f"/d/x.npz@{sha}").suffix == ".npz"
    assert dataset_label(f"/d/t.csv#y@{sha}") == "t.csv#y@abababab" and dataset_label("szt") == "szt"
