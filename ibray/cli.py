"""The `ibray` command: parse, validate, make one library call, print the outcome.

Errors a user can fix (a bad value, a missing data file, a folder that holds something else,
a sweep another driver is running, a results root that cannot be written or that the nodes of
a cluster do not share) print one line `ibray: error: ...` and exit with code 2, before
anything is written. Ctrl-C stops a sweep with one line that says how to resume it, exit 130.
Only `sweep` imports Ray, once its file is known to be good.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_STORAGE = 3  # the results root is full or read-only: free it, then --resume
DEFAULT_RESULTS = "results"


def _trial_parser(sub) -> None:
    import dataclasses

    from ibray.config import TrialConfig, field_help, field_type

    p = sub.add_parser("trial", help="train one configuration for several seeds (no Ray) and write Parquet")
    helps = field_help()
    # One flag per TrialConfig field, named like it, with its comment as help: they cannot drift.
    for field in dataclasses.fields(TrialConfig):
        flag, default, help = "--" + field.name.replace("_", "-"), field.default, helps[field.name]
        if field.name == "seeds":  # parsed by TrialConfig, which names a bad seed
            p.add_argument(flag, default="0", help=f"{help} (default: 0)")
        elif field.name in ("estimators", "measure"):
            p.add_argument(
                flag,
                default=",".join(default),
                help=f"{help}, comma-separated (default: {','.join(default) or 'none'})",
            )
        elif isinstance(default, tuple):
            p.add_argument(
                flag,
                type=float,
                nargs=len(default),
                default=default,
                metavar=("LOW", "HIGH"),
                help=f"{help} (default: {' '.join(map(str, default))})",
            )
        else:
            p.add_argument(flag, type=field_type(field.name), default=default, help=f"{help} (default: {default})")
    p.add_argument("--data-dir", default=None, help="data directory (default: $IBRAY_DATA_DIR or ~/.cache/ibray)")
    p.add_argument("--out", default="results/trial", help="results folder")
    p.add_argument("--overwrite", action="store_true", help="replace results of another trial in --out")
    p.set_defaults(handler=_run_trial)


def _config_from_args(args):
    """The TrialConfig of the `trial` flags (every flag named like a config field sets it), its
    data file pinned and, once read, checked against the architecture (conv takes images)."""
    import dataclasses

    from ibray.config import TrialConfig, check_sample_shape, own_module
    from ibray.data import pin_dataset_shape

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialConfig)}
    for key in ("estimators", "measure"):
        values[key] = tuple(e.strip() for e in getattr(args, key).split(",") if e.strip())
    config, shape = pin_dataset_shape(TrialConfig(**values))
    if shape is not None:
        check_sample_shape(config.architecture, config.dataset, shape)
    if own_module(config.architecture) is None:
        return config  # a built-in network: nothing to pin, and torch not imported yet
    from ibray.module_pin import pin_module  # imports torch

    return pin_module(config)


def _run_trial(args) -> int:
    from ibray.records import trial_lock

    # the flags, the data file and --out are checked before torch is imported (seconds): a
    # mistyped command fails at once
    config = _config_from_args(args)
    _check_trial_folder(args.out)
    from ibray.run import run_resumable

    def progress(_checkpoint: dict, scalars: dict) -> None:
        acc = (
            f" train_acc {scalars['train_acc']:.3f} test_acc {scalars['test_acc']:.3f}"
            if "train_acc" in scalars
            else ""
        )
        print(f"  epoch {scalars['epoch']}/{config.prefit_epochs + config.epochs}{acc}", flush=True)

    with trial_lock(args.out):
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
    from ibray.errors import TrialStateError
    from ibray.records import TRIAL_LOCK

    path = existing = Path(out)
    try:
        if path.is_dir():
            # a writer killed mid-write leaves only hidden *.tmp files, which the rerun removes
            # (and a trial.lock stays behind a writer that died before its first write)
            entries = [
                e.name
                for e in path.iterdir()
                if not (e.name.startswith(".") and e.name.endswith(".tmp")) and e.name != TRIAL_LOCK
            ]
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
                raise TrialStateError(
                    f"--out {out}: {existing} is a file, so no folder can be made under it; pick another --out"
                )
        # a real attempt, not os.access: that says yes to root everywhere, /proc included
        os.rmdir(tempfile.mkdtemp(prefix=".ibray-probe-", dir=existing))
    except OSError as error:
        raise TrialStateError(
            f"--out {out}: cannot write in {existing} ({error.strerror or error}); pick another --out"
        ) from None


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
    p.add_argument(
        "--trial-seeds",
        type=int,
        default=25,
        help="seeds per trial in the all-cores run (MI every 5th epoch, one trial per core; sweeps/syn_8bit.yaml's seeds_per_trial)",
    )
    p.add_argument(
        "--engine", choices=("eager", "compiled"), default="eager", help="the trials' engine (see ibray trial --help)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--mnist",
        action="store_true",
        help="instead: the MNIST networks (bottleneck2 at 10 and 20 seeds over 6 epochs, conv at 10 over 2, after 2 "
        "warm-up epochs; MI every 2nd epoch) against this machine's matrix-product peak; needs the MNIST files "
        "(ibray data download mnist); takes a few minutes",
    )
    which.add_argument(
        "--own-module",
        action="store_true",
        help="instead: own torch.nn.Modules on MNIST, 10 seeds, 8 bits, MI every 2nd epoch: bottleneck2 as an "
        "nn.Sequential against the built-in engine (4 epochs each, after 2 warm-up epochs) and their ratio, and "
        "sweeps/nets.py's LeNet-style CNN (2 epochs, after 1), against this machine's matrix-product peak; needs the "
        "MNIST files; takes a few minutes (eager only)",
    )
    p.add_argument(
        "--data-dir", default=None, help="where the MNIST files are (default: $IBRAY_DATA_DIR, else ~/.cache/ibray)"
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p.set_defaults(handler=_run_bench)


def _require_positive(option: str, value: float, whole: bool = False) -> None:
    """Refuse a flag's value that is not a positive finite number (a whole one with `whole`):
    0 seeds hang a benchmark's worker processes, a live line every 0 or NaN seconds spins."""
    from ibray.config import ConfigError

    if not (math.isfinite(value) and value > 0 and (not whole or float(value).is_integer())):
        kind = "a whole number of 1 or more" if whole else "a positive number of seconds"
        raise ConfigError(f"{option} {value:g}: is not allowed; give {kind}")


def _run_bench(args) -> int:
    from ibray.bench import mnist_benchmarks, own_module_benchmarks, run_benchmarks

    for option, value in (("--epochs", args.epochs), ("--seeds", args.seeds), ("--trial-seeds", args.trial_seeds)):
        _require_positive(option, value, whole=True)

    if args.own_module:
        if args.engine != "eager":
            from ibray.config import ConfigError

            raise ConfigError(f"--engine {args.engine}: own modules run eagerly; leave --engine out with --own-module")
        own_module_benchmarks(data_dir=args.data_dir, as_json=args.json)
        return 0
    if args.mnist:
        mnist_benchmarks(engine=args.engine, data_dir=args.data_dir, as_json=args.json)
        return 0
    run_benchmarks(
        epochs=args.epochs, seeds=args.seeds, trial_seeds=args.trial_seeds, engine=args.engine, as_json=args.json
    )
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


def _compare_parser(sub) -> None:
    # Listed by `ibray --help`; main() hands `ibray compare ...` to analysis.compare whole, as `report`.
    sub.add_parser(
        "compare", help="each estimator against the exact values: errors, DPI violations, phases", add_help=False
    )


def _run_compare(argv: list[str]) -> int:
    from analysis.compare import main as compare_main

    return compare_main(argv)


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a sweep file and print its grid (trials, seeds, seed-epochs)")
    v.add_argument("file", help="sweep file, e.g. sweeps/quickstart.yaml")
    v.set_defaults(handler=_run_validate)


def _sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run a sweep file's trials on Ray Tune (embedded local Ray, or --address)")
    s.add_argument("file", help="sweep file, e.g. sweeps/quickstart.yaml")
    s.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto, or HEAD_IP:6379)")
    s.add_argument(
        "--results",
        default=os.environ.get("IBRAY_RESULTS", DEFAULT_RESULTS),
        help="results root: a path or a URI such as s3://bucket/ibray (default: $IBRAY_RESULTS or ./results)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run of this sweep (with none, says so and starts it fresh)",
    )
    s.add_argument("--overwrite", action="store_true", help="delete this sweep's earlier results and run it again")
    s.add_argument(
        "--data-dir",
        default=None,
        help="data directory of this driver, and of every node with --data-on-workers (default: $IBRAY_DATA_DIR or ~/.cache/ibray)",
    )
    s.add_argument(
        "--data-on-workers",
        action="store_true",
        help="trials load their data from their own node's data directory instead of getting it from the driver "
        "through Ray's object store (for data too large for it); every node must then hold the data",
    )
    s.add_argument("--view-every", type=float, default=10.0, help="seconds between progress lines")
    s.add_argument(
        "--report",
        metavar="PATH",
        default=None,
        help="while the sweep runs, rewrite the HTML report at PATH from what its trials have written so far "
        "(marked partial, with how many trials are complete), and once more at the end",
    )
    s.add_argument(
        "--report-every",
        metavar="SECONDS",
        type=int,
        default=300,
        help="seconds between the --report's rewrites (default: %(default)s)",
    )
    s.set_defaults(handler=_run_sweep)


def _run_validate(args) -> int:
    from ibray.sweep import load_sweep

    spec = load_sweep(args.file)
    print(f"ok: {spec.describe()}")
    return 0


def _run_sweep(args) -> int:
    from ibray.sweep import SweepError, load_sweep

    if args.resume and args.overwrite:
        raise SweepError("--resume and --overwrite contradict each other; pass one of them")
    _require_positive("--view-every", args.view_every)
    _require_positive("--report-every", args.report_every, whole=True)
    spec = load_sweep(args.file)
    live = _live_report(spec, args) if args.report is not None else None
    print(spec.describe(), flush=True)
    from ibray.launch.launcher import (
        run_sweep,  # imports ray: only once the file is known to be good
    )

    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    interrupted = f"ibray: interrupted; run `ibray sweep {args.file} --resume` to finish the sweep"
    try:
        if live is not None:
            live.start()
        outcome = run_sweep(
            spec,
            args.results,
            address=args.address,
            resume=args.resume,
            overwrite=args.overwrite,
            data_dir=data_dir,
            view_every=args.view_every,
            data_on_workers=args.data_on_workers,
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune took over the signal
        print(interrupted, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if live is not None:
            live.stop()  # a report being built now is left unwritten; the last one written stays
    if outcome.interrupted:  # Tune stopped on the first Ctrl-C and saved its state
        print(interrupted, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if live is not None:
        live.final()  # from everything the sweep wrote; a failure is said in one line
    if outcome.storage:  # every trial was stopped: one line says why and what to do
        trial, fault = sorted(outcome.storage.items())[0]
        print(
            f"ibray: error: cannot write the results ({fault}, trial {trial}); what was written is intact: make room "
            f"(or make {outcome.folder} writable), then run `ibray sweep {args.file} --resume`",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_STORAGE
    print(outcome.summary(args.file), flush=True)
    # A sweep succeeds when its results verify: every trial complete, every row exactly once.
    return 0 if (outcome.verified or not outcome.ran) else EXIT_FAILED_TRIALS


def _live_report(spec, args):
    """The sweep's live report (analysis.live), its --report path checked as `ibray report`
    checks -o: writable, and not among the results it reads (the sweep's folder)."""
    from urllib.parse import unquote, urlparse

    from analysis.live import LiveReport
    from analysis.output import OutputError, check_report_outputs
    from ibray.sweep import SweepError
    from ibray.sweep_folder import sweep_folder

    folder = sweep_folder(spec, args.results)
    local = unquote(urlparse(folder).path) if folder.startswith("file://") else folder
    try:
        check_report_outputs(args.report, inputs=[local], option="--report")
    except OutputError as error:
        raise SweepError(str(error)) from None
    return LiveReport(folder, os.path.abspath(args.report), args.report_every, trials=len(spec.trials))


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
    _compare_parser(sub)
    _validate_parser(sub)
    _sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:  # analysis.report parses its own options and --help
        return _run_report(argv[1:])
    if argv[:1] == ["compare"]:  # so does analysis.compare
        return _run_compare(argv[1:])
    args = build_parser().parse_args(argv)
    from ibray.config import ConfigError
    from ibray.data import DataError
    from ibray.errors import TrialStateError, VerifyError

    try:
        return args.handler(args)
    except (ConfigError, DataError, TrialStateError, VerifyError) as error:
        print(f"ibray: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ibray: interrupted; rerun the same command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
