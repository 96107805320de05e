"""Engine 'compiled': the dense networks' training step and measuring pass through torch.compile.

Its numbers differ from the eager engine's in the last bits, so it is held to the same rules in
its own right: the gradient of the hand-written step (checked against autograd for eager), a
seed independent of its batch mates, the same numbers for the same config, and a machine
without a C++ compiler running it eagerly after one warning. batch_size 113 divides the
synthetic training set (3277 = 29 x 113): one batch shape, so one compilation per trial.
"""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl
import torch

from ibray.config import TrialConfig
from ibray.device import compiled
from ibray.models import batched_network
from ibray.run import run_trial

COMPILED = dict(engine="compiled", learning_rate=0.01, batch_size=113, epochs=3, write_every=3)


def rows(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/mi/*.parquet").drop("trial").sort("seed", "epoch", "layer")


def test_the_compiled_step_computes_the_eager_gradient():
    torch.manual_seed(2)
    x, targets, valid = torch.randn(3, 128, 12) * 2, torch.randint(0, 2, (3, 113)), 113
    nets = []
    for _ in range(2):
        net = batched_network("syn", "tanh", 12, 2, bits=8, seeds=3).train()
        for slot in range(3):
            net.init_slot(slot, torch.Generator().manual_seed(slot))
        nets.append(net)
    eager, fast = nets
    eager.gradient(x, targets, valid)
    compiled(fast.gradient, "the test's step", x.device)(x, targets, valid)
    scale = eager.flat.grad.abs().max()
    assert scale > 0
    torch.testing.assert_close(fast.flat.grad, eager.flat.grad, rtol=1e-5, atol=1e-6 * scale)
    for mine, theirs in zip(fast.quantizers, eager.quantizers):  # ranges: min/max of the same values
        torch.testing.assert_close(mine.low, theirs.low, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.high, theirs.high, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(mine.low).all() and (mine.low < mine.high).all()


def test_a_compiled_seed_is_independent_of_its_mates_and_repeatable(tmp_path, synthetic):
    run_trial(TrialConfig(seeds=(3,), **COMPILED), tmp_path / "alone", dataset=synthetic)
    run_trial(TrialConfig(seeds=(1, 3, 5), **COMPILED), tmp_path / "shared", dataset=synthetic)
    run_trial(TrialConfig(seeds=(1, 3, 5), **COMPILED), tmp_path / "again", dataset=synthetic)
    alone, shared = rows(tmp_path / "alone"), rows(tmp_path / "shared")
    assert alone.height == 4 * 6 and alone["mi_xt"].min() > 0
    assert alone.equals(shared.filter(pl.col("seed") == 3))
    assert shared.equals(rows(tmp_path / "again"))
    # the compiled trial is another trial than the eager one: its own id
    assert (
        TrialConfig(seeds=(3,), **COMPILED).trial_id()
        != TrialConfig(seeds=(3,), **{**COMPILED, "engine": "eager"}).trial_id()
    )


def test_without_a_cxx_compiler_the_trial_runs_eagerly_after_one_warning(tmp_path):
    # A real failure: the C++ compiler inductor is told to use does not exist (and an empty
    # cache, so nothing compiled earlier is reused).
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "ibray.cli",
        "trial",
        "--engine",
        "compiled",
        "--seeds",
        "0-1",
        "--epochs",
        "2",
        "--batch-size",
        "113",
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # found out before tracing (inductor's own compiler lookup), one warning for each function
    for name in ("the training step", "the measuring pass"):
        warnings = [line for line in result.stderr.splitlines() if f"torch.compile cannot compile {name}" in line]
        assert len(warnings) == 1, result.stderr[-3000:]
        assert "on the CPU (InvalidCxxCompiler: " in warnings[0] and warnings[0].endswith("; running it eagerly")
    mi = pl.read_parquet(f"{tmp_path}/out/mi/*.parquet")
    assert mi.height == 2 * 3 * 6 and mi["mi_xt"].is_finite().all()


def test_each_compiled_wrapper_compiles_afresh_past_dynamos_recompile_limit(monkeypatch):
    # Dynamo keeps compiled graphs on the code object they came from, and past its recompile
    # limit runs that code eagerly without a word: with a limit of 2, the third object's graph
    # (another constant, as another network's shape or bit width) would silently run eagerly
    # if the graphs of every wrapper added up on the method's one code object.
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)

    class Scale:
        def __init__(self, k: int) -> None:
            self.k = k

        def apply(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.k + 1

    for k in (1, 2, 3):
        graphs = counters["stats"]["unique_graphs"]
        out = compiled(Scale(k).apply, "a test's function", torch.device("cpu"))(torch.ones(3))
        assert counters["stats"]["unique_graphs"] == graphs + 1, f"object {k} ran eagerly"
        assert out.tolist() == [k + 1.0] * 3
