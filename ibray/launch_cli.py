"""The sweep commands of `ibray`: `validate FILE` and `sweep FILE`.

Registered by ibray/cli.py through `add_parsers(sub)`. A bad sweep file raises SweepError (a
ConfigError), which the CLI prints as one `ibray: error: ...` and exit code 2, before Ray starts;
so does a sweep another driver is running, missing data, or a results root that cannot be
written or (on a cluster) is not shared by every node. Ctrl-C
stops a sweep with one line that says how to resume it, and exit code 130.
"""

from __future__ import annotations

import os
import sys

DEFAULT_RESULTS = "results"
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def add_parsers(sub) -> None:
    v = sub.add_parser("validate", help="check a sweep file and print its grid (trials, seeds, seed-epochs)")
    v.add_argument("file", help="sweep file, e.g. sweeps/quickstart.yaml")
    v.set_defaults(handler=_run_validate)

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
    spec = load_sweep(args.file)
    print(spec.describe(), flush=True)
    from ibray.launch import (
        run_sweep,  # imports ray: only once the file is known to be good
    )

    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    interrupted = f"ibray: interrupted; run `ibray sweep {args.file} --resume` to finish the sweep"
    try:
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
    if outcome.interrupted:  # Tune stopped on the first Ctrl-C and saved its state
        print(interrupted, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    print(outcome.summary(args.file), flush=True)
    # A sweep succeeds when its results verify: every trial complete, every row exactly once.
    return 0 if (outcome.verified or not outcome.ran) else EXIT_FAILED_TRIALS
