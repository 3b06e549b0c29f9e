"""``jaxcal derive``, ``sweep`` and ``gates``: the Microplex workflow commands."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow commands to the ``jaxcal`` parser."""
    derive = subparsers.add_parser(
        "derive",
        help="derive a child tier of exactly K records from a parent's weights, then refit it",
        description="Select exactly --budget records by a budget-constrained L0 path started from the "
        "parent's weights (ties broken by record id, the --state-floor best records of every state kept), "
        "refit them with gates off, and write a run directory that `jaxcal gates` checks.",
    )
    derive.add_argument("--package", "--package-path", dest="package", type=pathlib.Path, required=True, help="the parent's calibration package (.npz)")
    derive.add_argument("--parent-weights", type=pathlib.Path, required=True, help="the parent's weights (.npy)")
    derive.add_argument("--budget", type=int, required=True, help="records the child keeps, exactly")
    derive.add_argument("--state-floor", type=int, default=0, help="keep at least this many records of every state")
    derive.add_argument("--output", type=pathlib.Path, required=True, help="run directory to write")
    derive.add_argument("--product", help="artifact name recorded for gates, e.g. mp-300k")
    derive.add_argument("--lambda-l0", type=float, nargs="+", help="first grid of the L0 path search")
    derive.add_argument("--search-epochs", type=int, default=300)
    derive.add_argument("--search-rounds", type=int, default=3, help="grid refinements around the budget")
    derive.add_argument("--refit-epochs", type=int, default=200)
    derive.add_argument("--beta", type=float, default=0.35, help="gate temperature of the search")
    derive.add_argument("--learning-rate", type=float, default=0.15)
    derive.add_argument("--seed", type=int, default=0)
    _add_holdout_options(derive)
    derive.add_argument("--early-stopping-patience", type=int, help="stop the refit this many epochs after the best held-out loss")
    derive.add_argument("--min-delta", type=float, default=0.0, help="smallest held-out improvement that counts")
    derive.set_defaults(run=run_derive)

    sweep = subparsers.add_parser(
        "sweep",
        help="fit a grid of lambda_l0 (and beta) values in one compiled program; write the frontier",
        description="One vmapped fit per beta over all --lambda-l0 values; writes frontier.csv (records kept "
        "vs train and held-out loss), frontier.png and sweep_config.json into --output.",
    )
    sweep.add_argument("--package", "--package-path", dest="package", type=pathlib.Path, required=True, help="calibration package (.npz)")
    sweep.add_argument("--lambda-l0", type=float, nargs="+", required=True, help="L0 penalties to fit side by side (one vmapped program)")
    sweep.add_argument("--beta", type=float, nargs="+", default=[0.35], help="gate temperatures, one compiled program each (default 0.35)")
    sweep.add_argument("--epochs", type=int, default=100, help="epochs per fit (default 100)")
    sweep.add_argument("--learning-rate", type=float, default=0.15, help="Adam learning rate (default 0.15)")
    sweep.add_argument("--init-keep-prob", type=float, default=0.999, help="initial gate keep probability (default 0.999)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the initialisation and gate draws (default 0)")
    sweep.add_argument("--output", type=pathlib.Path, required=True, help="directory to write")
    _add_holdout_options(sweep)
    sweep.set_defaults(run=run_sweep)

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


def _add_holdout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out targets")
    group.add_argument("--holdout-fraction", type=float, help="hold out this share of target families (default: none)")
    group.add_argument("--holdout-seed", type=int, default=0, help="seed of the split (default 0)")
    group.add_argument("--family-columns", nargs="+", metavar="COLUMN",
                       help="target columns that define a family (default: geo_level variable domain_variable)")  # fmt: skip


def _split(args: argparse.Namespace, package: Any) -> Any:
    if args.holdout_fraction is None:
        return None
    from ._holdout import FAMILY_COLUMNS, holdout_split

    return holdout_split(
        package.targets, fraction=args.holdout_fraction, family_columns=args.family_columns or FAMILY_COLUMNS,
        seed=args.holdout_seed,
    )  # fmt: skip


def run_derive(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from ._package import load_package
    from ._tiers import DEFAULT_LAMBDA_L0, derive_tier, write_tier_run

    package = load_package(args.package)
    parent_weights = np.load(args.parent_weights, allow_pickle=False)
    derivation = derive_tier(
        package,
        parent_weights,
        args.budget,
        key=jax.random.key(args.seed),
        state_floor=args.state_floor,
        split=_split(args, package),
        lambda_l0=args.lambda_l0 or DEFAULT_LAMBDA_L0,
        search_epochs=args.search_epochs,
        search_rounds=args.search_rounds,
        refit_epochs=args.refit_epochs,
        beta=args.beta,
        learning_rate=args.learning_rate,
        patience=args.early_stopping_patience,
        min_delta=args.min_delta,
    )
    config = write_tier_run(
        derivation,
        args.output,
        product=args.product,
        inputs={"package": str(args.package), "parent_weights": str(args.parent_weights), "seed": args.seed},
    )
    parent, child = derivation.tier.comparison["parent"], derivation.tier.comparison["child"]
    for name in ("records_kept", "train_loss", "holdout_loss", "mean_error_pct", "effective_sample_size"):
        print(f"{name:<22s} parent {_fmt(parent[name]):>12s}   child {_fmt(child[name]):>12s}")
    print(f"wrote {config.parent}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    import jax

    from ._package import atomic_write, load_package
    from ._sweep import sweep_grid, write_frontier

    package = load_package(args.package)
    split = _split(args, package)
    frontier, _ = sweep_grid(
        package, args.lambda_l0, args.beta, key=jax.random.key(args.seed), split=split,
        init_keep_prob=args.init_keep_prob, epochs=args.epochs, learning_rate=args.learning_rate,
    )  # fmt: skip
    paths = write_frontier(frontier, args.output)
    config = {
        "command": "sweep",
        "package": str(args.package),
        "lambda_l0": args.lambda_l0,
        "beta": args.beta,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "init_keep_prob": args.init_keep_prob,
        "seed": args.seed,
        "holdout": None if split is None else split.to_dict(),
    }
    atomic_write(args.output / "sweep_config.json", lambda f: f.write(json.dumps(config, indent=2)), mode="w")
    print(frontier.to_string(index=False))
    print(f"wrote {paths['csv']}")
    return 0


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


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"
