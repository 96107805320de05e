"""The trial config: defaults from the protocol, and one clear error per bad value."""

from __future__ import annotations

import pytest

from ibray.config import ConfigError, TrialConfig, parse_seeds


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
