"""``jaxcal derive``, ``sweep`` and ``gates``: the Microplex workflow commands."""

from __future__ import annotations

import argparse
import pathlib


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow commands to the ``jaxcal`` parser."""
    gates = subparsers.add_parser(
        "gates",
        help="check a run directory against artifact gates; exit 0 only when all pass",
        description="Write an artifact-gate JSON for RUN_DIR. Exit 0 passed, 1 failed, 2 incomplete "
        "(a gate the run cannot measure).",
    )
    gates.add_argument("run_dir", metavar="RUN_DIR", type=pathlib.Path)
    gates.add_argument("--output", type=pathlib.Path, help="report path (default RUN_DIR/artifact_gates.json)")
    gates.add_argument("--product", help="artifact name, e.g. mp-300k (default: the run's, else RUN_DIR's name)")
    gates.add_argument("--max-holdout-loss", type=float, help="fail when the best held-out loss is above this")
    gates.add_argument("--max-mean-error", type=float, help="fail when the mean |relative error| (a fraction) is above this")
    gates.add_argument("--max-records", type=int, help="fail when more records are kept (default: a tier's budget)")
    gates.add_argument("--min-ess-ratio", type=float, help="fail when effective sample size / positive records is below this")
    gates.set_defaults(run=run_gates)


def run_gates(args: argparse.Namespace) -> int:
    from ._gatereport import REPORT, exit_code, gate_report, write_gate_report

    report = gate_report(
        args.run_dir,
        product=args.product,
        max_holdout_loss=args.max_holdout_loss,
        max_mean_error=args.max_mean_error,
        max_records=args.max_records,
        min_ess_ratio=args.min_ess_ratio,
    )
    path = write_gate_report(report, args.output or args.run_dir / REPORT)
    for name, gate in report["gates"].items():
        print(f"{gate['status']:<10s} {name:<22s} {gate['summary']}")
    print(f"{report['summary']['status']}: {path}")
    return exit_code(report)
