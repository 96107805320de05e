"""Property-based tests (hypothesis) of what users type: any mapping of YAML values is a valid
sweep or one SweepError, and any `ibray trial` flags give a TrialConfig, one ConfigError or
argparse's usage error; never another exception, and each example in bounded time."""

from __future__ import annotations

import contextlib
import io
import os
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ibray.cli import _config_from_args, build_parser
from ibray.config import ConfigError, TrialConfig
from ibray.sweep import SWEEP_KEYS, TRIAL_KEYS, SweepError, SweepSpec, parse_sweep

KEYS = sorted(set(TRIAL_KEYS) | set(SWEEP_KEYS))
# where values come from in practice: small numbers, edge numbers, short words, names of things
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3000),
    st.sampled_from([0, -1, 2**31, 2**63, 10**12, -(10**12)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.,@#/ :", max_size=16),
    st.sampled_from(
        ["exact", "bin30", "tanh", "relu", "szt", "8-4-2", "bottleneck2", "0-9", "0-100000000000", "a.npz#y"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["cpu", "gpu", "x"]), inner, max_size=2)
    ),
    max_leaves=8,
)
anything = st.dictionaries(
    st.sampled_from(KEYS) | st.text(string.ascii_lowercase + "_", min_size=1, max_size=10), values, max_size=8
)
# a working sweep with one or two keys changed: reaches the validators past the first error
near_valid = st.dictionaries(st.sampled_from(KEYS), values | scalars, max_size=2).map(
    lambda changed: {"name": "p", "epochs": 3, **changed}
)
mappings = anything | near_valid
PROPERTY = settings(
    max_examples=int(os.environ.get("IBRAY_PROPERTY_EXAMPLES", "300")),
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(mappings)
def test_any_mapping_is_a_sweep_or_one_sweep_error(mapping):
    text = yaml.safe_dump(mapping)
    try:
        spec = parse_sweep(text, "s.yaml")
    except SweepError as error:
        message = str(error)
        assert message.startswith("s.yaml") and len(message) < 20_000
    else:
        assert isinstance(spec, SweepSpec) and spec.trials
        assert all(isinstance(trial, TrialConfig) for trial in spec.trials)


FLAGS = [name.replace("_", "-") for name in TRIAL_KEYS]


@PROPERTY
@given(st.dictionaries(st.sampled_from(FLAGS), st.lists(scalars.map(str), min_size=1, max_size=2), max_size=6))
def test_any_trial_flags_give_a_config_or_one_error(flags):
    argv = ["trial"]
    for flag, words in flags.items():
        argv += [f"--{flag}", *words]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit as exit:
        assert exit.code == 2 and "error:" in errors.getvalue()  # argparse's usage line
        return
    try:
        config = _config_from_args(args)
    except ConfigError as error:
        assert str(error) and "\n" not in str(error).strip()
    else:
        assert config.trial_id() and TrialConfig.from_dict(config.to_dict()) == config
