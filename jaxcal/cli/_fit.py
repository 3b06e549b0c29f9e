"""``jaxcal fit``: policyengine-us-data's ``unified_calibration --package-path`` with jaxcal's engine.

Same flags and defaults as PolicyEngine, plus named hyperparameter sets, checkpoints that
resume exactly (optimizer state and PRNG key included), and PolicyEngine's restarting Adam
only on request. Outputs go beside ``--output``: the weights, ``unified_diagnostics.csv``,
``unified_run_config.json``, ``calibration_log.csv`` (with ``--log-freq``),
``loss_curve.png`` and a checkpoint; each is written to a temporary file and renamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import signal
import sys
import time
import warnings
from typing import Any

import numpy as np

from .cli import CommandError

PRESETS = {"local": 1e-8, "national": 1e-4}
"""policyengine-us-data's ``--preset``: lambda_l0."""
DEFAULTS = {"epochs": 100, "beta": 0.35, "lambda_l0": 1e-8, "lambda_l2": 1e-12, "learning_rate": 0.15}
"""policyengine-us-data's ``fit_l0_weights`` defaults."""
GAMMA, ZETA = -0.1, 1.1
PROGRESS_EPOCHS = 10
"""Epochs between progress updates when no --log-freq is given."""
INIT_KEEP_PROB = 0.999
LOG_WEIGHT_JITTER_SD = 0.05
LOG_ALPHA_JITTER_SD = 0.01
DEFAULT_OUTPUT = pathlib.Path("storage/calibration/calibration_weights.npy")
PE_LOG_COLUMNS = [
    "target_name", "estimate", "target", "epoch", "error", "rel_error", "abs_error", "rel_abs_error", "loss", "achievable",
]  # fmt: skip
MICROCALIBRATE_LOG_COLUMNS = ["epoch", "loss", "target_name", "target", "estimate", "error", "abs_error", "rel_abs_error"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit calibration weights to a package",
        description="Fit hard-concrete L0 calibration weights (l0-python's semantics) to a calibration package.",
    )
    parser.add_argument("--package-path", required=True, help="calibration package (.npz; a PolicyEngine .pkl with --allow-pickle)")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a PolicyEngine pickle package (unpickling runs code: trusted files only)")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT, help=f"weights .npy; the other outputs go beside it (default {DEFAULT_OUTPUT})")
    parser.add_argument("--epochs", type=int, help=f"epochs to run; with --resume-from, additional epochs (default {DEFAULTS['epochs']})")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="policyengine-us-data's lambda_l0 preset: local 1e-8, national 1e-4")
    parser.add_argument("--hyperparameters", metavar="NAME", help="a named set from configs/presets.yaml (flags override it)")
    parser.add_argument("--presets-file", type=pathlib.Path, help="where the named sets are (default configs/presets.yaml)")
    parser.add_argument("--lambda-l0", type=float, help=f"L0 penalty, overrides --preset (default {DEFAULTS['lambda_l0']}); 0 turns the gates off")
    parser.add_argument("--beta", type=float, help=f"gate temperature (default {DEFAULTS['beta']})")
    parser.add_argument("--lambda-l2", type=float, help=f"L2 penalty (default {DEFAULTS['lambda_l2']})")
    parser.add_argument("--learning-rate", type=float, help=f"Adam learning rate (default {DEFAULTS['learning_rate']})")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu", "tpu"], default="auto", help="where to run (default: JAX's choice)")
    parser.add_argument("--devices", type=_device_count, metavar="N|all", help="split the records over N devices of --device's platform (or all of them)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the model's initialisation and the gate draws (default 42)")
    parser.add_argument("--log-freq", type=int, metavar="N", help="every N epochs: log every target to calibration_log.csv and write a checkpoint")
    parser.add_argument("--log-format", choices=["pe", "microcalibrate"], default="pe", help="calibration_log.csv columns: PolicyEngine's or microcalibrate's dashboard's")
    parser.add_argument("--target-config", type=pathlib.Path, help="YAML of include/exclude target rules, applied to the package")
    parser.add_argument("--resume-from", type=pathlib.Path, help="a checkpoint, a weights .npy with a sibling checkpoint, or a bare .npy to warm-start from")
    parser.add_argument("--checkpoint-output", type=pathlib.Path, help="where to write the checkpoint (default: OUTPUT with .checkpoint.npz)")
    parser.add_argument("--pe-compat-adam-restarts", action="store_true", help="reproduce PolicyEngine: a fresh Adam (and fresh jitter) at every --log-freq chunk")
    holdout = parser.add_argument_group("held-out targets", "train on some target families, watch the rest (see docs/workflow.md)")
    holdout.add_argument("--holdout-fraction", type=float, metavar="F", help="hold out this share of the target families of every stratum (e.g. 0.2)")
    holdout.add_argument("--holdout-seed", type=int, help="seed of the split (default: --seed)")
    holdout.add_argument("--holdout-family-column", metavar="COLUMN", help="a targets-table column whose values are the families (default: geo_level x variable x domain)")
    holdout.add_argument("--early-stopping-patience", type=int, metavar="EPOCHS", help="stop when the held-out loss has not improved for this many epochs; keep the best epoch's weights")
    holdout.add_argument("--min-delta", type=float, default=0.0, help="how much the held-out loss must drop to count as an improvement (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.set_defaults(run=run)


def checkpoint_path_for(weights_path: pathlib.Path) -> pathlib.Path:
    """The checkpoint written beside a weights file: ``w.npy`` -> ``w.checkpoint.npz``."""
    return weights_path.with_suffix(".checkpoint.npz")


@dataclasses.dataclass
class _Progress:
    """The live line: a rich progress bar on a terminal, plain lines elsewhere, nothing when quiet."""

    total: int
    quiet: bool

    def __post_init__(self) -> None:
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("epoch"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(), transient=False,
            )  # fmt: skip
            self.task = self.bar.add_task("fit", total=self.total, status="compiling")
            self.bar.start()

    def update(self, epoch: int, loss: float, mean_error: float, active: int, n_records: int) -> None:
        status = f"loss {loss:.4g}  mean rel err {mean_error:.2%}  active {active:,}/{n_records:,}"
        if self.bar is not None:
            self.bar.update(self.task, completed=epoch, status=status)
        elif not self.quiet:
            print(f"epoch {epoch:>6d}/{self.total}  {status}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run(args: argparse.Namespace) -> int:
    """Everything the user can get wrong is checked before the first epoch runs."""
    start_time = time.perf_counter()
    hyper = resolve_hyperparameters(args)
    _use_platform(args.device)
    mesh = None if args.devices is None else _record_mesh(args.devices, args.device)
    if args.log_freq is not None and args.log_freq < 1:
        raise CommandError(f"--log-freq must be a positive number of epochs, got {args.log_freq}")
    if args.pe_compat_adam_restarts and args.log_freq is None:
        raise CommandError("--pe-compat-adam-restarts needs --log-freq (PolicyEngine restarts Adam at every log chunk)")
    _check_holdout_flags(args)
    output = args.output
    if output.suffix != ".npy":
        raise CommandError(f"--output must name a .npy file, got {output}")
    _check_writable(output.parent)
    checkpoint_path = args.checkpoint_output or checkpoint_path_for(output)
    _check_writable(checkpoint_path.parent)

    import jax

    from ._checkpoint import signature_differences
    from ._diagnostics import relative_errors
    from ._package import load_package
    from ._targets import apply_target_config, load_target_config, policyengine_initial_weights

    package = load_package(args.package_path, allow_pickle=args.allow_pickle)
    if args.target_config is not None:
        package = apply_target_config(package, load_target_config(args.target_config))
    signature = package.signature()
    split = _holdout_split(args, package)
    if split is not None:
        hyper["holdout"] = {"fraction": args.holdout_fraction, "seed": split.seed, "family_column": args.holdout_family_column}

    checkpoint, warm_weights = None, None
    if args.resume_from is not None:
        checkpoint, warm_weights = _resume_source(args.resume_from, package.n_records)
    if checkpoint is not None:
        differences = signature_differences(checkpoint.signature, signature)
        if differences:
            raise CommandError(
                f"the checkpoint {args.resume_from} belongs to another problem: {', '.join(differences)} differ"
            )
        changed = [k for k in sorted(hyper) if k != "epochs" and checkpoint.hyperparameters.get(k) != hyper[k]]
        if changed:
            warnings.warn(
                "resuming with other hyperparameters than the checkpoint's: "
                + ", ".join(f"{k} {checkpoint.hyperparameters.get(k)} -> {hyper[k]}" for k in changed),
                stacklevel=1,
            )
    if not args.quiet:
        print(
            f"package {args.package_path}: {package.n_targets:,} targets x {package.n_records:,} records, "
            f"{package.nnz:,} nonzeros",
            file=sys.stderr,
        )

    import jaxcal

    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    use_gates = hyper["lambda_l0"] > 0
    if checkpoint is not None:
        model, fit_key, start_epoch = checkpoint.model, checkpoint.key, checkpoint.epochs
        if model.use_gates != use_gates:
            raise CommandError("cannot resume a fit with gates as one without (or back): keep --lambda-l0 on the same side of 0")
    else:
        if warm_weights is not None:
            initial = warm_weights
        elif package.initial_weights is not None:
            initial = package.initial_weights
        else:
            initial = policyengine_initial_weights(package)
        model = jaxcal.CalibrationWeights.init(
            package.n_records, key=init_key, init_weights=initial, init_keep_prob=INIT_KEEP_PROB,
            log_alpha_jitter_sd=LOG_ALPHA_JITTER_SD, beta=hyper["beta"], gamma=GAMMA, zeta=ZETA, use_gates=use_gates,
        )  # fmt: skip
        start_epoch = 0
    optimizer = jaxcal.torch_adam(hyper["learning_rate"])
    opt_state = checkpoint.opt_state(optimizer) if checkpoint is not None else None

    epochs = hyper["epochs"]
    chunk = args.log_freq or PROGRESS_EPOCHS
    log = _CalibrationLog(output.parent / "calibration_log.csv", args.log_format, package) if args.log_freq else None
    progress = _Progress(total=start_epoch + epochs, quiet=args.quiet)
    stop = _StopOnSignal()
    state: dict[str, Any] = {"model": model, "opt_state": opt_state, "epochs": start_epoch, "losses": []}

    def save_checkpoint_now() -> None:
        from ._checkpoint import save_checkpoint

        save_checkpoint(
            checkpoint_path, model=state["model"], opt_state=state["opt_state"], key=fit_key,
            epochs=state["epochs"], signature=signature, hyperparameters=hyper,
        )  # fmt: skip

    def after_chunk(result: jaxcal.FitResult) -> bool:
        # Host copies: the chunk's buffers are donated to the next one.
        state["losses"].extend(np.asarray(result.history.total)[-(result.epochs - state["epochs"]) :])
        state.update(model=jax.tree.map(np.array, result.model), opt_state=jax.tree.map(np.array, result.opt_state))
        state["epochs"] = result.epochs
        estimates = package.matrix @ np.asarray(result.weights, np.float64)  # every target, held-out too
        errors = np.abs(relative_errors(estimates, package.target_values))
        progress.update(result.epochs, state["losses"][-1], float(errors.mean()), result.n_active, package.n_records)
        if log is not None:
            log.append(result.epochs, estimates)
        if args.log_freq or result.epochs == start_epoch + epochs:
            save_checkpoint_now()
        return stop.requested

    fit_settings = dict(
        lambda_l0=hyper["lambda_l0"], lambda_l2=hyper["lambda_l2"], optimizer=optimizer, loss="relative",
        log_weight_jitter_sd=LOG_WEIGHT_JITTER_SD, mesh=mesh,
    )  # fmt: skip
    held_out = None
    with stop:
        try:
            if split is not None:
                held_out = jaxcal.fit_with_holdout(
                    model, package, split, key=fit_key, epochs=epochs, eval_every=chunk,
                    patience=args.early_stopping_patience, min_delta=args.min_delta,
                    callback=lambda result, row: after_chunk(result), opt_state=opt_state, start_epoch=start_epoch,
                    **fit_settings,
                )  # fmt: skip
                result = held_out.result
            elif args.pe_compat_adam_restarts:
                result = _fit_with_restarts(
                    model, package.target_matrix(), package.target_values, fit_key, start_epoch,
                    fit_settings | {"epochs": epochs, "chunk_epochs": chunk, "callback": after_chunk},
                )  # fmt: skip
            else:
                result = jaxcal.fit(
                    model, package.target_matrix(), package.target_values, key=fit_key, opt_state=opt_state,
                    start_epoch=start_epoch, epochs=epochs, chunk_epochs=chunk, callback=after_chunk, **fit_settings,
                )  # fmt: skip
        finally:
            progress.close()
    if stop.requested:
        save_checkpoint_now()
        if log is not None:
            log.finish()
        raise CommandError(
            f"stopped by {stop.requested_by} after epoch {state['epochs']}; checkpoint written to {checkpoint_path} "
            f"(continue with --resume-from {checkpoint_path})",
            code=130,
        )
    if log is not None:
        log.finish()
    weights = np.asarray(result.weights, np.float32)
    artifacts = {"checkpoint": checkpoint_path} | ({"calibration_log": log.path} if log else {})
    if held_out is not None:
        artifacts |= {f"holdout_log_{kind}": pathlib.Path(path) for kind, path in held_out.write_log(output.parent).items()}
        if not args.quiet and held_out.stop_reason == "early_stopping":
            print(f"early stopping at epoch {held_out.stopped_epoch}: best held-out loss at epoch {held_out.best_epoch}", file=sys.stderr)
    summary = write_fit_outputs(
        output, package, weights, np.asarray(state["losses"]), start_epoch,
        hyper | {"seed": args.seed, "device": args.device, "devices": args.devices, "pe_compat_adam_restarts": args.pe_compat_adam_restarts},
        extra_artifacts=artifacts, elapsed=time.perf_counter() - start_time, package_path=args.package_path,
        extra_record={"holdout": held_out.summary()} if held_out is not None else None,
    )  # fmt: skip
    if not args.quiet:
        print(headline(summary, output), flush=True)
    return 0


def _device_count(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of devices or 'all', got {text!r}")
    return int(text)


def _check_holdout_flags(args: argparse.Namespace) -> None:
    if args.holdout_fraction is None:
        if args.early_stopping_patience is not None or args.holdout_family_column or args.holdout_seed is not None:
            raise CommandError("--early-stopping-patience, --holdout-seed and --holdout-family-column need --holdout-fraction")
        return
    if not 0 < args.holdout_fraction < 1:
        raise CommandError(f"--holdout-fraction must lie in (0, 1), got {args.holdout_fraction}")
    if args.early_stopping_patience is not None and args.early_stopping_patience < 1:
        raise CommandError(f"--early-stopping-patience must be a positive number of epochs, got {args.early_stopping_patience}")
    if not args.min_delta >= 0:
        raise CommandError(f"--min-delta must not be negative, got {args.min_delta}")
    if args.pe_compat_adam_restarts:
        raise CommandError("--pe-compat-adam-restarts cannot be combined with held-out targets")


def _holdout_split(args: argparse.Namespace, package: Any) -> Any:
    if args.holdout_fraction is None:
        return None
    from ._holdout import holdout_split

    columns = (args.holdout_family_column,) if args.holdout_family_column else None
    settings = {"family_columns": columns} if columns else {}
    seed = args.seed if args.holdout_seed is None else args.holdout_seed
    return holdout_split(package.targets, fraction=args.holdout_fraction, seed=seed, **settings)


def resolve_hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the named set, then --preset, then explicit flags; checked."""
    hyper = dict(DEFAULTS)
    if args.hyperparameters is not None:
        hyper |= load_named_set(args.hyperparameters, args.presets_file)
    if args.preset is not None:
        hyper["lambda_l0"] = PRESETS[args.preset]
    for name in DEFAULTS:
        value = getattr(args, name)
        if value is not None:
            hyper[name] = value
    if not isinstance(hyper["epochs"], int) or hyper["epochs"] < 0:
        raise CommandError(f"--epochs must be a non-negative whole number, got {hyper['epochs']}")
    for name in ("lambda_l0", "lambda_l2"):
        if not np.isfinite(hyper[name]) or hyper[name] < 0:
            raise CommandError(f"--{name.replace('_', '-')} must be a finite non-negative number, got {hyper[name]}")
    for name in ("beta", "learning_rate"):
        if not np.isfinite(hyper[name]) or hyper[name] <= 0:
            raise CommandError(f"--{name.replace('_', '-')} must be positive, got {hyper[name]}")
    return {k: (int(v) if k == "epochs" else float(v)) for k, v in hyper.items()}


def load_named_set(name: str, presets_file: pathlib.Path | None) -> dict[str, Any]:
    import yaml

    path = presets_file or _default_presets_file()
    try:
        sets = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise CommandError(f"presets file not found: {path}") from None
    except yaml.YAMLError as error:
        raise CommandError(f"presets file {path} is not valid YAML: {error}") from None
    if name not in sets:
        raise CommandError(f"unknown hyperparameter set {name!r}; {path} has: {', '.join(sorted(sets))}")
    chosen = sets[name] or {}
    unknown = set(chosen) - set(DEFAULTS)
    if unknown:
        raise CommandError(f"set {name!r} in {path} has unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    return chosen


def _default_presets_file() -> pathlib.Path:
    local = pathlib.Path("configs/presets.yaml")
    return local if local.is_file() else pathlib.Path(__file__).resolve().parents[1] / "configs" / "presets.yaml"


def _use_platform(device: str) -> None:
    """Make the requested platform's first device JAX's default (``auto``: JAX's choice)."""
    if device == "auto":
        return
    import jax

    from ._sharding import select_devices

    try:
        chosen = select_devices(1, device)[0]
    except ValueError as error:
        raise CommandError(f"--device {device}: {error}") from None
    jax.config.update("jax_default_device", chosen)


def _record_mesh(devices: int | str, platform: str) -> Any:
    from ._sharding import record_mesh

    try:
        return record_mesh(devices, platform)
    except ValueError as error:
        raise CommandError(f"--devices {devices}: {error}") from None


def _check_writable(directory: pathlib.Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create the output directory {directory}: {error.strerror}") from None
    import os

    if not os.access(directory, os.W_OK | os.X_OK):
        raise CommandError(f"the output directory {directory} is not writable")


def _resume_source(path: pathlib.Path, n_records: int) -> tuple[Any, np.ndarray | None]:
    """A checkpoint (given, or beside a weights .npy), or else weights to warm-start from."""
    from ._checkpoint import load_checkpoint

    if not path.is_file():
        raise CommandError(f"--resume-from: {path} not found")
    if path.suffix == ".npz":
        return load_checkpoint(path), None
    sibling = checkpoint_path_for(path)
    if sibling.is_file():
        return load_checkpoint(sibling), None
    try:
        weights = np.load(path, allow_pickle=False)
    except Exception as error:
        raise CommandError(f"--resume-from: {path} is neither a checkpoint nor a weights .npy ({error})") from None
    if weights.shape != (n_records,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise CommandError(
            f"--resume-from: {path} must hold {n_records} finite non-negative weights, got shape {weights.shape}"
        )
    return None, weights.astype(np.float64)


def _fit_with_restarts(model, matrix, targets, key, start_epoch, settings):
    """PolicyEngine's loop: one l0-python ``fit`` per log chunk, each with a fresh Adam and
    fresh log-weight jitter (drawn from the key folded with the chunk's first epoch)."""
    import jax

    import jaxcal

    settings = dict(settings)
    epochs, chunk, callback = settings.pop("epochs"), settings.pop("chunk_epochs"), settings.pop("callback")
    done, result = 0, None
    while done < epochs:
        n = min(chunk, epochs - done)
        first = start_epoch + done
        result = jaxcal.fit(
            model, matrix, targets, key=jax.random.fold_in(key, first), epochs=n, start_epoch=first, **settings
        )
        model = result.model
        done += n
        if callback(result):
            break
    return result


class _StopOnSignal:
    """SIGINT and SIGTERM ask the fit to stop after the running chunk (a checkpoint follows)."""

    def __init__(self) -> None:
        self.requested_by: str | None = None

    @property
    def requested(self) -> bool:
        return self.requested_by is not None

    def __enter__(self) -> _StopOnSignal:
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested_by = signal.Signals(signum).name


class _CalibrationLog:
    """``calibration_log.csv``: every target at every logged epoch, PolicyEngine's or
    microcalibrate's columns; written to a temporary file and renamed when the fit ends."""

    def __init__(self, path: pathlib.Path, log_format: str, package: Any) -> None:
        self.path, self.format = path, log_format
        self.targets = package.target_values
        self.names = np.asarray(package.target_names, dtype=object)
        self.achievable = package.row_sums() > 0
        self.partial = path.with_name(f".{path.name}.partial")
        self.rows_written = 0
        columns = PE_LOG_COLUMNS if log_format == "pe" else [""] + MICROCALIBRATE_LOG_COLUMNS
        self.partial.write_text(",".join(columns) + "\n")

    def append(self, epoch: int, estimates: np.ndarray) -> None:
        import pandas as pd

        error = estimates - self.targets
        # PolicyEngine's log divides by the target itself, 0 where it is 0.
        rel_error = np.divide(error, self.targets, out=np.zeros_like(error), where=self.targets != 0)
        table = pd.DataFrame(
            {
                "target_name": self.names, "estimate": estimates, "target": self.targets, "epoch": epoch,
                "error": error, "rel_error": rel_error, "abs_error": np.abs(error), "rel_abs_error": np.abs(rel_error),
                "loss": rel_error**2, "achievable": self.achievable,
            }
        )  # fmt: skip
        if self.format == "pe":
            table[PE_LOG_COLUMNS].to_csv(self.partial, mode="a", header=False, index=False)
        else:
            table.index += self.rows_written
            table[MICROCALIBRATE_LOG_COLUMNS].to_csv(self.partial, mode="a", header=False, index=True)
        self.rows_written += len(table)

    def finish(self) -> None:
        self.partial.replace(self.path)


def write_fit_outputs(
    output: pathlib.Path,
    package: Any,
    weights: np.ndarray,
    losses: np.ndarray,
    start_epoch: int,
    settings: dict[str, Any],
    *,
    extra_artifacts: dict[str, pathlib.Path],
    elapsed: float,
    package_path: Any,
    extra_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Weights, diagnostics CSV, loss curve and run-config JSON beside ``output``; the run record."""
    import jaxcal

    from ._diagnostics import error_summary, target_diagnostics, weight_health
    from ._package import atomic_write, sha256_file

    directory = output.parent
    diagnostics = target_diagnostics(package, weights)
    paths = {
        "weights": output,
        "diagnostics": directory / "unified_diagnostics.csv",
        "loss_curve": directory / "loss_curve.png",
    } | extra_artifacts
    atomic_write(paths["weights"], lambda f: np.save(f, weights))
    atomic_write(paths["diagnostics"], lambda f: diagnostics.to_csv(f, index=False), mode="w")
    plot_loss_curve(paths["loss_curve"], losses, start_epoch)
    health = weight_health(weights)
    record = {
        "hyperparameters": settings,
        "package": str(package_path),
        "package_signature": package.signature(),
        "n_targets": package.n_targets,
        "n_records": package.n_records,
        "epochs_completed": start_epoch + len(losses),
        "final_loss": float(losses[-1]) if len(losses) else None,
        "weight_sum": health["total"],
        "weight_nonzero": health["count_positive"],
        **error_summary(diagnostics["rel_error"]),
        "weight_health": health,
        "elapsed_seconds": elapsed,
        "artifacts": {name: sha256_file(path) for name, path in paths.items() if path.is_file()},
        "versions": _versions(),
        "jaxcal_version": jaxcal.__version__,
        "weights_file": output.name,
    } | (extra_record or {})
    atomic_write(directory / "unified_run_config.json", lambda f: json.dump(record, f, indent=2), mode="w")
    return record


def plot_loss_curve(path: pathlib.Path, losses: np.ndarray, start_epoch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ._package import atomic_write

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = np.arange(start_epoch + 1, start_epoch + len(losses) + 1)
    axis.plot(epochs, losses, color="#1f77b4")
    if len(losses) and np.all(np.asarray(losses) > 0):
        axis.set_yscale("log")
    axis.set(xlabel="epoch", ylabel="objective", title="jaxcal fit: objective by epoch")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda f: figure.savefig(f, format="png"))
    plt.close(figure)


def headline(record: dict[str, Any], output: pathlib.Path) -> str:
    return (
        f"{record['n_targets']:,} targets, {record['n_records']:,} records: "
        f"mean rel error {record['mean_error_pct']:.2f}%, median {record['median_error_pct']:.2f}%, "
        f"within 10% {record['share_within_10pct']:.1%}, records kept {record['weight_nonzero']:,}, "
        f"{record['elapsed_seconds']:.1f}s\nweights: {output}  (diagnostics, run config, loss curve beside it)"
    )


def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "equinox", "optax", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
