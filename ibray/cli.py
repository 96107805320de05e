"""The `ibray` command: parse, validate, make one library call, print the outcome.

Errors a user can fix (a bad value, a missing data file, a folder that holds something else)
print one line `ibray: error: ...` and exit with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

EXIT_USAGE = 2


def _trial_parser(sub) -> None:
    from ibray.config import default_for

    p = sub.add_parser("trial", help="train one configuration for several seeds (no Ray) and write Parquet")
    p.add_argument(
        "--dataset",
        default=default_for("dataset"),
        help="synthetic12 (offline), szt, mnist, or a data file: .npz (arrays x, y), .parquet or .csv "
        "(feature columns and a label column); an optional 'split' array/column fixes the train/test split",
    )
    p.add_argument(
        "--architecture",
        default=default_for("architecture"),
        help="syn, bottleneck2, bottleneck4, hourglass, 4x10, conv, or hidden widths such as 10-7-5-4-3 (softmax added)",
    )
    p.add_argument("--label-column", default=default_for("label_column"), help="the label column of a .csv/.parquet --dataset")
    p.add_argument("--train-fraction", type=float, default=default_for("train_fraction"), help="stratified train share (synthetic sets, files without a split)")
    p.add_argument("--split-seed", type=int, default=default_for("split_seed"), help="seed of the stratified train/test split")
    p.add_argument("--activation", default=default_for("activation"), help="tanh, relu, sigmoid, elu, leaky_relu, linear")
    p.add_argument("--bits", type=int, default=default_for("bits"), help="2..16, or 32 for the float32 network")
    p.add_argument("--seeds", default="0", help="e.g. 0-9 or 0,3,5-7 (trained together as one batched model)")
    p.add_argument("--estimators", default="exact", help="comma-separated: exact, bin30, bin100, bin256, bin<n>")
    p.add_argument("--epochs", type=int, default=default_for("epochs"))
    p.add_argument("--prefit-epochs", type=int, default=default_for("prefit_epochs"), help="epochs on shuffled labels first")
    p.add_argument("--learning-rate", type=float, default=default_for("learning_rate"))
    p.add_argument("--batch-size", type=int, default=default_for("batch_size"))
    p.add_argument("--mi-every", type=int, default=default_for("mi_every"), help="epochs between MI measurements")
    p.add_argument("--init", default=default_for("init"), help="truncated_normal (the paper) or glorot")
    p.add_argument("--range-tracking", default=default_for("range_tracking"), help="epoch (the paper), moving_average, batch")
    p.add_argument("--bin-bounds", default=default_for("bin_bounds"), help="global, layer or fixed (binning estimators)")
    p.add_argument("--min-train-acc", type=float, default=default_for("min_train_acc"))
    p.add_argument("--restart-epoch", type=int, default=default_for("restart_epoch"))
    p.add_argument("--write-every", type=int, default=default_for("write_every"), help="epochs between Parquet writes")
    p.add_argument("--device", default=default_for("device"), help="auto, cpu or cuda")
    p.add_argument("--data-dir", default=None, help="data directory (default: $IBRAY_DATA_DIR or ~/.cache/ibray)")
    p.add_argument("--out", default="results/trial", help="results folder")
    p.add_argument("--overwrite", action="store_true", help="replace results of another trial in --out")
    p.set_defaults(handler=_run_trial)


def _config_from_args(args):
    """The TrialConfig of the `trial` flags: every flag named like a config field sets it."""
    import dataclasses

    from ibray.config import TrialConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialConfig) if hasattr(args, f.name)}
    values["estimators"] = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    return TrialConfig(**values)


def _run_trial(args) -> int:
    from ibray.train import run_resumable

    config = _config_from_args(args)
    _check_trial_folder(args.out)

    def progress(_checkpoint: dict, scalars: dict) -> None:
        acc = f" train_acc {scalars['train_acc']:.3f} test_acc {scalars['test_acc']:.3f}" if "train_acc" in scalars else ""
        print(f"  epoch {scalars['epoch']}/{config.prefit_epochs + config.epochs}{acc}", flush=True)

    print(f"trial {config.trial_id()}: {len(config.seeds)} seed(s) -> {args.out}", flush=True)
    summary = run_resumable(config, args.out, data_dir=args.data_dir, overwrite=args.overwrite, on_write=progress)
    if summary is None:
        print(f"{args.out} already holds this trial, complete; nothing to do (--overwrite to redo it)")
        return 0
    rate = summary.seeds * summary.epochs / max(summary.seconds, 1e-9)
    print(
        f"done in {summary.seconds:.1f} s ({rate:.0f} seed-epochs/s); final train_acc "
        f"{summary.final.get('train_acc', float('nan')):.3f}, test_acc {summary.final.get('test_acc', float('nan')):.3f}"
        + (f"; restarted seeds {summary.restarts}" if summary.restarts else "")
    )
    print(f"results: {summary.out}/mi and {summary.out}/metrics (Parquet); report: ibray report {summary.out}")
    return 0


def _check_trial_folder(out: str) -> None:
    """Refuse an --out that cannot take this trial's results, before any data is read or written:
    a file, a place where no folder can be made, or a folder of something else."""
    from ibray.train import TrialStateError

    path = existing = Path(out)
    try:
        if path.is_dir():
            # a writer killed mid-write leaves only hidden *.tmp files, which the rerun removes
            entries = [e.name for e in path.iterdir() if not (e.name.startswith(".") and e.name.endswith(".tmp"))]
            if entries and not (path / "trial.json").exists():
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise TrialStateError(
                    f"--out {out}: the folder holds other files ({shown}) but no trial.json, so it is not "
                    f"a trial's folder; pick a new or empty --out"
                )
        elif os.path.lexists(path):
            raise TrialStateError(f"--out {out}: is a file, not a folder; pick another --out")
        else:
            existing = path.absolute().parent
            while not os.path.lexists(existing):
                existing = existing.parent
            if not existing.is_dir():
                raise TrialStateError(f"--out {out}: {existing} is a file, so no folder can be made under it; pick another --out")
        # a real attempt, not os.access: that says yes to root everywhere, /proc included
        os.rmdir(tempfile.mkdtemp(prefix=".ibray-probe-", dir=existing))
    except OSError as error:
        raise TrialStateError(f"--out {out}: cannot write in {existing} ({error.strerror or error}); pick another --out") from None


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="fetch data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    d = data_sub.add_parser("download", help="download a data set into the data directory and check its SHA-256")
    d.add_argument("name", help="szt or mnist (synthetic12 needs no download)")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--url", default=None, help="fetch from this base URL instead (a mirror)")
    d.set_defaults(handler=_run_download)


def _run_download(args) -> int:
    from ibray.data import data_dir, download

    paths = download(args.name, args.data_dir, base_url=args.url)
    for path in paths:
        print(f"ok {path}")
    if not paths:
        print(f"{args.name} needs no download; it is generated offline")
    print(f"data directory: {data_dir(args.data_dir)}")
    return 0


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="print training and exact-MI speed on this machine")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the 1-seed timing run (half for the batched run)")
    p.add_argument("--seeds", type=int, default=50, help="seeds in the batched run")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p.set_defaults(handler=_run_bench)


def _run_bench(args) -> int:
    from ibray.bench import run_benchmarks

    run_benchmarks(epochs=args.epochs, seeds=args.seeds, as_json=args.json)
    return 0


def _verify_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check that results are complete: every expected row of every trial exactly once, nothing stray",
    )
    p.add_argument("paths", nargs="+", metavar="RESULTS", help="trial, sweep or results folders (paths or URIs)")
    p.set_defaults(handler=_run_verify)


def _run_verify(args) -> int:
    from ibray.verify import summary, verify

    checks = verify(args.paths)
    for check in checks:
        print(check.line())
    print(summary(checks))
    return 0 if all(check.ok for check in checks) else 1


def _report_parser(sub) -> None:
    # Here to be listed by `ibray --help`; main() hands `ibray report ...` to analysis.report
    # whole, since argparse's REMAINDER drops an option that comes before the folders.
    sub.add_parser("report", help="one self-contained HTML report of results folders", add_help=False)


def _run_report(argv: list[str]) -> int:
    from analysis.report import main as report_main

    return report_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibray", description="Exact information-plane analysis of quantized neural networks, swept with Ray Tune."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _trial_parser(sub)
    _data_parser(sub)
    _bench_parser(sub)
    _verify_parser(sub)
    _report_parser(sub)
    try:
        from ibray import launch_cli
    except ImportError:
        launch_cli = None
    if launch_cli is not None:
        launch_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:  # analysis.report parses its own options and --help
        return _run_report(argv[1:])
    args = build_parser().parse_args(argv)
    from ibray.config import ConfigError
    from ibray.data import DataError
    from ibray.train import TrialStateError
    from ibray.verify import VerifyError

    try:
        return args.handler(args)
    except (ConfigError, DataError, TrialStateError, VerifyError) as error:
        print(f"ibray: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ibray: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
