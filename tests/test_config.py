"""The trial config: defaults from the protocol, and one clear error per bad value."""

from __future__ import annotations

import dataclasses

import pytest

from ibray.config import MAX_SEEDS, NUMBER_RULES, ConfigError, TrialConfig, parse_seeds


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
        (dict(estimators=("kde",)), "estimators: unknown estimator 'kde'"),
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
        (dict(train_fraction=float("-inf")), "train_fraction: -inf is not allowed; give a number strictly between 0 and 1"),
        (dict(train_fraction=True), "train_fraction: True is not allowed"),
        (dict(bin_range=(float("-inf"), float("inf"))), "bin_range: [-inf, inf] is not allowed; give [low, high], two finite numbers"),
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
