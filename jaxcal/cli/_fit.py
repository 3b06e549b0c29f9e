"""``jaxcal fit``: policyengine-us-data's ``unified_calibration --package-path`` with jaxcal's engine.

Same flags and defaults as PolicyEngine (:data:`jaxcal.PE_DEFAULTS`), plus named
hyperparameter sets, checkpoints that resume exactly (optimizer state and PRNG key included),
and PolicyEngine's restarting Adam only on request. The command makes a
:class:`jaxcal.runs.FitPlan` of its flags and hands it to :mod:`jaxcal.runs`: the outputs go
beside ``--output`` (see :func:`jaxcal.runs.write_run_dir`), each written to a temporary file
and renamed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._defaults import OPTIMIZER_NAMES, PE_DEFAULTS, PE_PRESETS
from ..runs import DEFAULT_OUTPUT, LOG_FORMATS, PLATFORM_ALIASES, PLATFORMS, PROGRESS_EPOCHS
from . import CommandError

if TYPE_CHECKING:
    from ..runs import HoldoutPlan, RunRecord

PLAN_FLAGS = (
    "seed",
    "device",
    "devices",
    "log_freq",
    "log_format",
    "target_config",
    "all_active_targets",
    "target_groups",
    "optimizer",
    "resume_from",
    "checkpoint_output",
    "pe_compat_adam_restarts",
    "allow_pickle",
    "quiet",
    "exclude_from_fit",
    "fail_if",
    "distributed",
    "coordinator",
    "num_processes",
    "process_id",
)
"""Flags that go to the plan as they are."""
PE = "policyengine-us-data's"
TOLERANCE_EXIT = 3
"""``jaxcal fit``'s exit code when a ``--fail-if`` rule is unmet (1 is a user mistake, 130 a signal)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit calibration weights to a package",
        description="Fit hard-concrete L0 calibration weights (l0-python's semantics) to a calibration package, "
        f"as {PE} unified_calibration --package-path does: its hyperparameters (jaxcal.PE_DEFAULTS), "
        "its target config and its target groups, unless told otherwise.",
    )
    parser.add_argument(
        "--package-path",
        type=pathlib.Path,
        required=True,
        help="calibration package (.npz; a PolicyEngine .pkl with --allow-pickle)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a PolicyEngine pickle package (unpickling runs code: trusted files only)",
    )
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=DEFAULT_OUTPUT,
        help=f"weights .npy; the other outputs go beside it (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs to run; with --resume-from, additional epochs (default {PE_DEFAULTS.epochs})",
    )
    parser.add_argument(
        "--preset",
        metavar="{local,national}",
        help=f"{PE} lambda_l0 preset: " + ", ".join(f"{k} {v:g}" for k, v in PE_PRESETS.items()),
    )
    parser.add_argument(
        "--hyperparameters", metavar="NAME", help="a named set from configs/presets.yaml (flags override it)"
    )
    parser.add_argument(
        "--presets-file", type=pathlib.Path, help="where the named sets are (default configs/presets.yaml)"
    )
    parser.add_argument(
        "--lambda-l0",
        type=float,
        help=f"L0 penalty, overrides --preset (default {PE_DEFAULTS.lambda_l0:g}); 0 turns the gates off",
    )
    parser.add_argument("--beta", type=float, help=f"gate temperature (default {PE_DEFAULTS.beta:g})")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        default="pe-adam",
        help=f"pe-adam: {PE} Adam at a constant rate (the default, exact); adam-cosine: the same Adam, "
        "its rate decaying to 0 over the epochs, which settles at the optimum (benchmarks/RESULTS.md)",
    )
    parser.add_argument("--lambda-l2", type=float, help=f"L2 penalty (default {PE_DEFAULTS.lambda_l2:g})")
    parser.add_argument(
        "--learning-rate", type=float, help=f"Adam learning rate (default {PE_DEFAULTS.learning_rate:g})"
    )
    parser.add_argument(
        "--device",
        choices=(*PLATFORMS, *PLATFORM_ALIASES),
        default="auto",
        help="where to run (default: JAX's choice; cuda, PolicyEngine's spelling, is gpu)",
    )
    parser.add_argument(
        "--devices",
        type=_device_count,
        metavar="N|all",
        help="split the records over N devices of --device's platform (or all of them)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the model's initialisation and the gate draws (default 42)"
    )
    parser.add_argument(
        "--log-freq",
        type=int,
        metavar="N",
        help="every N epochs: log every target to calibration_log.csv and write a checkpoint "
        f"(default: no log, progress every {PROGRESS_EPOCHS} epochs, a checkpoint at the end)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="pe",
        help="calibration_log.csv columns: PolicyEngine's or microcalibrate's dashboard's",
    )
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument(
        "--target-config",
        type=pathlib.Path,
        help=f"YAML of include/exclude target rules, applied to the package (default: {PE} own target_config.yaml)",
    )
    targets.add_argument(
        "--all-active-targets",
        action="store_true",
        help=f"fit every target of the package, not only those {PE} target config keeps",
    )
    parser.add_argument(
        "--no-target-groups",
        dest="target_groups",
        action="store_false",
        help=f"weigh every target alike in the loss, not {PE} target groups (each group counts once)",
    )
    parser.add_argument(
        "--exclude-from-fit",
        action="append",
        default=[],
        metavar="RULE",
        help="leave the targets RULE matches out of the loss but in every output, with their estimates (an honest "
        "check): FIELD=VALUE[,FIELD=VALUE...] over variable, geo_level, domain_variable, geographic_id, or a YAML "
        "file with an 'exclude' list of such rules; repeatable",
    )
    parser.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="RULE:TOLERANCE",
        help=f"exit {TOLERANCE_EXIT} (outputs written) unless every target RULE matches ends within TOLERANCE "
        "(a fraction, or a percentage such as 1%%) of its value, e.g. variable=person_count,geo_level=national:1%%; "
        "repeatable",
    )
    parser.add_argument(
        "--resume-from",
        type=pathlib.Path,
        help="a checkpoint, a weights .npy with a sibling checkpoint, or a bare .npy to warm-start from",
    )
    parser.add_argument(
        "--checkpoint-output",
        type=pathlib.Path,
        help="where to write the checkpoint (default: OUTPUT with .checkpoint.npz)",
    )
    parser.add_argument(
        "--pe-compat-adam-restarts",
        action="store_true",
        help="reproduce PolicyEngine: a fresh Adam (and fresh jitter) at every --log-freq chunk",
    )
    holdout = parser.add_argument_group(
        "held-out targets", "train on some target families, watch the rest (see docs/workflow.md)"
    )
    holdout.add_argument(
        "--holdout-fraction",
        type=float,
        metavar="F",
        help="hold out this share of the target families of every stratum (e.g. 0.2)",
    )
    holdout.add_argument("--holdout-seed", type=int, help="seed of the split (default: --seed)")
    holdout.add_argument(
        "--holdout-family-column",
        metavar="COLUMN",
        help="a targets-table column whose values are the families (default: geo_level x variable x domain)",
    )
    holdout.add_argument(
        "--early-stopping-patience",
        type=int,
        metavar="EPOCHS",
        help="stop when the held-out loss has not improved for this many epochs; keep the best epoch's weights",
    )
    holdout.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        help="how much the held-out loss must drop to count as an improvement (default 0)",
    )
    processes = parser.add_argument_group(
        "many hosts",
        "one process per host joined by jax.distributed; each reads its records of the package, the first "
        "writes the outputs (see docs/guide.md)",
    )
    processes.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process fit, its coordinator and place found by JAX (Cloud TPU, SLURM, ...)",
    )
    processes.add_argument(
        "--coordinator", metavar="HOST:PORT", help="the first process's address (implies --distributed)"
    )
    processes.add_argument("--num-processes", type=int, metavar="N", help="how many processes join the fit")
    processes.add_argument("--process-id", type=int, metavar="I", help="this process's rank, 0 to N-1 (0 writes)")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Everything the user can get wrong is checked (the plan) before the first epoch runs."""
    started = time.perf_counter()
    import contextlib

    from .. import runs
    from ..io._files import run_dir_lock

    plan = runs.FitPlan(
        package_path=args.package_path,
        output=args.output,
        hyperparameters=runs.resolve_hyperparameters(
            vars(args), named_set=args.hyperparameters, presets_file=args.presets_file, preset=args.preset
        ),
        holdout=_holdout_plan(args),
        **{name: getattr(args, name) for name in PLAN_FLAGS},
    )
    runs.join_processes(plan)
    writer = runs.writes_outputs()
    package = runs.load_fit_package(plan)
    begin = runs.start(plan, package)
    if not plan.quiet and writer:
        print(
            f"package {plan.package_path}: {package.n_targets:,} targets x {package.n_records:,} records, "
            f"{package.nnz:,} nonzeros",
            file=sys.stderr,
        )
    # one run at a time writes a run directory (of a multi-process fit, its first process)
    with run_dir_lock(plan.output.parent) if writer else contextlib.nullcontext():
        outcome = runs.run_fit(plan, begin, runs.fit_observers(plan, begin))
        if outcome.stopped_by is not None:
            raise CommandError(
                f"stopped by {outcome.stopped_by} after epoch {outcome.epochs}; checkpoint written to "
                f"{plan.checkpoint_path} (finish the run with --resume-from {plan.checkpoint_path} "
                f"--epochs {begin.epoch + plan.epochs - outcome.epochs})",
                code=130,
            )
        failure = outcome.failure()
        if failure is not None:
            raise CommandError(f"the fit failed: {failure}; no weights written (a lower --learning-rate may help)")
        held_out = outcome.holdout
        if not plan.quiet and held_out is not None and held_out.stop_reason == "early_stopping":
            print(
                f"early stopping at epoch {held_out.stopped_epoch}: best held-out loss at epoch {held_out.best_epoch}",
                file=sys.stderr,
            )
        record = runs.write_run_dir(plan, begin, outcome, elapsed=time.perf_counter() - started)
    if record is None:  # another process of a multi-process fit: the first reports
        return 0
    if not plan.quiet:
        print(headline(record), flush=True)
        if record.excluded_from_fit:
            print(excluded_line(record.excluded_from_fit), flush=True)
        print("\n".join(f"{label}:{path}" for label, path in runs.output_paths(plan, record).items()), flush=True)
    unmet = [check for check in record.fail_if or () if not check["passed"]]
    if unmet:
        raise CommandError(
            "; ".join(
                f"--fail-if {check['rule']}: {check['n_failed']:,} of {check['n_targets']:,} targets outside "
                f"{100 * check['tolerance']:.4g}% (worst {check['worst_target']} at {check['worst_rel_error']:+.2%})"
                for check in unmet
            )
            + " (outputs written)",
            code=TOLERANCE_EXIT,
        )
    return 0


def excluded_line(excluded: Mapping[str, Any]) -> str:
    """What a fit says of the targets it left out of its loss (the headline is of the others)."""
    return (
        f"excluded from the fit: {excluded['n_targets']:,} targets, mean rel error {excluded['mean_error_pct']:.2f}%, "
        f"median {excluded['median_error_pct']:.2f}% (achievable ones; in unified_diagnostics.csv)"
    )


def headline(record: RunRecord) -> str:
    """The lines a fit ends with, before the paths of what it wrote (as policyengine-us-data
    prints them): how well it fits, over the achievable targets, then per geography level and
    how many targets are impossible (PolicyEngine's test: a row sum that is not positive)."""
    line = (
        f"{record.n_targets:,} targets, {record.n_records:,} records: "
        f"mean rel error {record.mean_error_pct:.2f}%, median {record.median_error_pct:.2f}%, "
        f"within 10% {record.share_within_10pct:.1%} ({'fitted ' if record.excluded_from_fit else ''}"
        f"achievable targets), records kept {record.weight_nonzero:,}, "
        f"{record.elapsed_seconds:.1f}s"
    )
    if not record.errors_by_level:
        return line
    levels = []
    for level, errors in record.errors_by_level.items():
        median = errors["median_error_pct"]
        shown = "no achievable one" if median is None or median != median else f"median {median:.2f}%"
        # A package of some states only: its national rows sum over their records, not the US's.
        scope = f" (the records of {errors['n_states']} states)" if errors.get("n_states", 51) < 51 else ""
        levels.append(f"{level}{scope} {errors['n_targets']:,} targets, {shown}")
    impossible = {level: e["n_impossible"] for level, e in record.errors_by_level.items() if e["n_impossible"]}
    shown = (
        f"impossible targets {sum(impossible.values()):,} ({', '.join(f'{k} {n:,}' for k, n in impossible.items())}; "
        "row sum not positive: no weights reach them, left out of the errors)"
        if impossible
        else "no impossible targets"
    )
    return f"{line}\nby level: {'; '.join(levels)}; {shown}"


def _holdout_plan(args: argparse.Namespace) -> HoldoutPlan | None:
    from ..runs import HoldoutPlan

    if args.holdout_fraction is None:
        if args.early_stopping_patience is not None or args.holdout_family_column or args.holdout_seed is not None:
            raise CommandError(
                "--early-stopping-patience, --holdout-seed and --holdout-family-column need --holdout-fraction"
            )
        return None
    return HoldoutPlan(
        fraction=args.holdout_fraction,
        seed=args.seed if args.holdout_seed is None else args.holdout_seed,
        family_column=args.holdout_family_column,
        patience=args.early_stopping_patience,
        min_delta=args.min_delta,
    )


def _device_count(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of devices or 'all', got {text!r}")
    return int(text)
