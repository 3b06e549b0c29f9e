"""A fit run: the package a plan names, where the fit starts, and the fit with its observers.

:func:`start` finds where the fit starts (fresh, from a checkpoint, or warm from weights) and
checks that a checkpoint belongs to the problem; :func:`run_fit` runs ``jaxcal.fit`` (or
:func:`jaxcal.workflow.fit_with_holdout`, or policyengine-us-data's restarting loop) a chunk
at a time, calling the observer after each, and stops cleanly after the running chunk on
SIGINT or SIGTERM.
"""

from __future__ import annotations

import functools
import pathlib
import signal
import threading
import warnings
from collections.abc import Callable
from typing import Any, Literal, final

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from .._defaults import PE_DEFAULTS
from .._fit import FitResult, fit
from .._matrix import AbstractTargetMatrix, TargetMatrix
from .._model import CalibrationWeights
from .._objective import Objective
from .._optimizers import optimizer_named
from .._sharding import ShardedMatrix, is_local, process_records, record_mesh, select_devices
from ..io import (
    CalibrationPackage,
    Checkpoint,
    apply_target_config,
    load_checkpoint,
    load_package,
    load_target_config,
    policyengine_initial_weights,
    policyengine_target_groups,
    signature_differences,
)
from ..io._checkpoint import HoldoutState
from ..io._files import load_weights
from ..workflow import LOG_COLUMNS, HoldoutFit, HoldoutSplit, fit_with_holdout, holdout_split
from ..workflow._holdout import HoldoutProgress
from ._names import CALIBRATION_LOG
from ._observers import CalibrationLog, Checkpoints, FitChunk, FitObserver, Observers, Progress
from ._plan import FitPlan, checkpoint_path_for
from ._run_dir import writes_outputs


def join_processes(plan: FitPlan) -> None:
    """Join a multi-process fit (``plan.distributed``) with ``jax.distributed.initialize``, before
    anything else touches JAX; on CPUs the processes talk through JAX's gloo collectives."""
    if not plan.distributed:
        return
    try:
        jax.distributed.initialize(
            coordinator_address=plan.coordinator, num_processes=plan.num_processes, process_id=plan.process_id
        )
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not join the multi-process fit: {first}") from None


def load_fit_package(plan: FitPlan) -> CalibrationPackage:
    """The package ``plan`` fits: ``package_path``, restricted by its ``applied_target_config``.
    In a multi-process fit each process reads only its records' nonzeros (:func:`process_records`)."""
    records = None
    if jax.process_count() > 1:
        _use_platform(plan.device)
        records = functools.partial(process_records, mesh=_record_mesh("all", plan.device))
    package = load_package(plan.package_path, allow_pickle=plan.allow_pickle, records=records)
    config = plan.applied_target_config
    if config is None:
        return package
    try:
        return apply_target_config(package, load_target_config(config))
    except ValueError as error:
        if plan.target_config is not None:
            raise
        raise ValueError(
            f"{error} (PolicyEngine's default target config, which `jaxcal fit` applies as "
            "policyengine-us-data does); fit them all with --all-active-targets"
        ) from None


def fit_objective(plan: FitPlan, package: CalibrationPackage) -> Objective:
    """The loss ``plan`` fits ``package`` with: its lambdas and, with ``plan.target_groups``,
    PolicyEngine's target groups weighed equally. Targets excluded from the fit go to groups of
    their own that weigh 0, so that the rest weigh what they would without them, and so they
    stay when a held-out split selects rows of the objective."""
    hyper = plan.hyperparameters
    groups = policyengine_target_groups(package.targets) if plan.target_groups else None
    excluded = plan.excluded_targets(package.targets)
    multipliers = None
    if excluded.any():
        fitted_groups = groups if groups is not None else np.zeros(package.n_targets, np.int32)
        groups = np.where(excluded, fitted_groups + fitted_groups.max() + 1, fitted_groups)
        multipliers = {int(group): 0.0 for group in np.unique(groups[excluded])}
    return Objective.create(
        package.n_targets,
        lambda_l0=hyper["lambda_l0"],
        lambda_l2=hyper["lambda_l2"],
        target_groups=groups,
        normalize_groups=plan.target_groups,
        group_multipliers=multipliers,
    )


@final
class FitStart(eqx.Module):
    """Where a run's fit starts: its problem, the devices, the parameters and the epochs done."""

    package: CalibrationPackage
    signature: dict[str, Any]
    """``package.signature()``: what a checkpoint of this run belongs to."""
    split: HoldoutSplit | None
    mesh: Mesh | None
    """The devices the records are split over (``--devices``), or None for one device."""
    model: CalibrationWeights
    opt_state: optax.OptState | None
    """A checkpoint's optimizer state; None starts a fresh optimizer (and log-weight jitter)."""
    key: PRNGKeyArray
    seed: int | None
    """The seed ``key`` came from: the plan's, or a checkpoint's (None when it does not say)."""
    epoch: int
    """Epochs done before this run (a checkpoint's)."""
    source: Literal["fresh", "checkpoint", "warm start"]
    holdout: HoldoutState | None = None
    """A checkpoint's held-out progress, which the run continues."""
    best_opt_state: optax.OptState | None = None
    """The optimizer state of that progress's best evaluation."""
    checkpoint_devices: int | None = None
    """How many devices the resumed checkpoint was fitted on (None when it does not say)."""

    @property
    def n_devices(self) -> int:
        """How many devices this run splits the records over."""
        return 1 if self.mesh is None else int(self.mesh.devices.size)

    def record_hyperparameters(self) -> dict[str, Any]:
        """What the fit really started from, for the run record: the gates' ``beta`` and the
        ``seed`` of the model, the processes of a multi-process fit (``n_processes``), and on a
        resume the checkpoint's (with its PRNG key's data as
        ``prng_key``, which a fresh fit draws from the seed, and the device count it was fitted
        on as ``checkpoint_devices``)."""
        used: dict[str, Any] = {"beta": self.model.beta, "seed": self.seed}
        if jax.process_count() > 1:
            used["n_processes"] = jax.process_count()
        if self.source == "checkpoint":
            used["prng_key"] = np.asarray(jax.random.key_data(self.key)).tolist()
            if self.checkpoint_devices is not None:
                used["checkpoint_devices"] = self.checkpoint_devices
        return used


def start(plan: FitPlan, package: CalibrationPackage) -> FitStart:
    """Choose the devices, split the targets and find where the fit starts: a checkpoint (given,
    or beside a weights ``.npy`` given as ``resume_from``), else the weights of a bare ``.npy``,
    else the package's initial weights or policyengine-us-data's rule. A checkpoint of another
    problem, or asked to continue with another gate temperature or held-out split, is a
    ``ValueError``; other hyperparameters than the checkpoint's (which the run uses), a
    ``--seed`` the checkpoint's key makes moot and another device count than the checkpoint's
    (legitimate: splitting the records changes only the order of the sums) are warnings."""
    plan.excluded_targets(package.targets)  # its rules' mistakes before any device work
    _use_platform(plan.device)
    mesh = _fit_mesh(plan)
    signature = package.signature()
    split = _holdout_split(plan, package)
    checkpoint, warm_weights = (None, None) if plan.resume_from is None else _resume_source(plan, package.n_records)
    init_key, fit_key = jax.random.split(jax.random.key(plan.seed))
    if checkpoint is not None:
        _check_checkpoint(plan, checkpoint, signature, package.n_records)
        saved_devices = _checkpoint_devices(plan, checkpoint, 1 if mesh is None else int(mesh.devices.size))
        saved_seed = checkpoint.hyperparameters.get("seed")
        return FitStart(
            package=package,
            signature=signature,
            split=split,
            mesh=mesh,
            model=checkpoint.model,
            opt_state=checkpoint.opt_state(fit_optimizer(plan, checkpoint.epochs)),
            key=checkpoint.key,
            seed=saved_seed if isinstance(saved_seed, int) else None,
            epoch=checkpoint.epochs,
            source="checkpoint",
            holdout=checkpoint.holdout,
            best_opt_state=None
            if checkpoint.holdout is None
            else checkpoint.holdout.best_opt_state(fit_optimizer(plan, checkpoint.epochs)),
            checkpoint_devices=saved_devices,
        )
    if warm_weights is not None:
        initial = warm_weights
    elif package.initial_weights is not None:
        initial = package.initial_weights
    else:
        initial = policyengine_initial_weights(package)
    model = CalibrationWeights.init(
        package.n_records,
        key=init_key,
        init_weights=initial,
        init_keep_prob=PE_DEFAULTS.init_keep_prob,
        log_alpha_jitter_sd=PE_DEFAULTS.log_alpha_jitter_sd,
        beta=plan.hyperparameters["beta"],
        gamma=PE_DEFAULTS.gamma,
        zeta=PE_DEFAULTS.zeta,
        use_gates=plan.hyperparameters["lambda_l0"] > 0,
    )
    return FitStart(
        package=package,
        signature=signature,
        split=split,
        mesh=mesh,
        model=model,
        opt_state=None,
        key=fit_key,
        seed=plan.seed,
        epoch=0,
        source="fresh" if warm_weights is None else "warm start",
    )


def fit_observers(plan: FitPlan, begin: FitStart) -> Observers:
    """What ``jaxcal fit`` watches a run with: progress, ``calibration_log.csv`` (with ``log_freq``)
    and checkpoints (every chunk with ``log_freq``, else at the end)."""
    if not writes_outputs():  # in a multi-process fit the first process reports and writes
        return Observers([])
    observers: list[FitObserver] = [Progress(begin.package, begin.epoch + plan.epochs, quiet=plan.quiet)]
    if plan.log_freq is not None:
        observers.append(CalibrationLog(plan.output.parent / CALIBRATION_LOG, begin.package, plan.log_format))
    observers.append(
        Checkpoints(
            plan.checkpoint_path,
            key=begin.key,
            signature=begin.signature,
            hyperparameters=plan.fit_hyperparameters() | {"seed": begin.seed, "n_devices": begin.n_devices},
            every_chunk=plan.log_freq is not None,
        )
    )
    return Observers(observers)


DIVERGED_RATIO = 10.0
"""A fit whose last objective is this many times its first has diverged: its weights are refused."""


@final
class FitOutcome(eqx.Module):
    """What :func:`run_fit` returns."""

    result: FitResult
    """The fit whose weights to keep (with held-out targets, the best epoch's)."""
    losses: Float[np.ndarray, " epochs"]
    """The objective of every epoch this run ran."""
    epochs: int
    """Epochs done when the run ended (with early stopping, past the best epoch)."""
    holdout: HoldoutFit | None
    stopped_by: str | None
    """``SIGINT`` or ``SIGTERM`` when a signal stopped the run (after a checkpoint), else None."""
    checkpoint: pathlib.Path | None = None
    """The checkpoint this run wrote (None if it wrote none)."""

    def failure(self) -> str | None:
        """Why these weights must not be kept (non-finite weights or objective, every weight 0, or an
        objective that ended :data:`DIVERGED_RATIO` times above where it started), or None when they may."""
        weights = np.asarray(self.result.weights)
        bad = int(np.size(weights) - np.isfinite(weights).sum())
        if bad:
            return f"{bad:,} of the {weights.size:,} weights are not finite"
        if weights.size and not weights.any():
            return "every weight is 0 (the fit collapsed)"
        if self.losses.size and not np.isfinite(self.losses[-1]):
            return f"the objective is {self.losses[-1]} at epoch {self.epochs}"
        if self.losses.size > 1 and self.losses[-1] > DIVERGED_RATIO * self.losses[0]:
            return f"it diverged: the objective rose from {self.losses[0]:.4g} to {self.losses[-1]:.4g}"
        return None


def run_fit(plan: FitPlan, begin: FitStart, observer: FitObserver) -> FitOutcome:
    """Fit ``plan.epochs`` more epochs from ``begin``, ``plan.chunk_epochs`` at a time, calling
    ``observer`` after each chunk (a run of no epochs shows it where it starts, as its one
    chunk). A signal stops the fit after the running chunk (the chunk the observer sees is then
    ``stopping``), unless early stopping ends it there. The observer is closed however the run
    ends."""
    objective = fit_objective(plan, begin.package)
    settings = dict(
        learning_rate=plan.hyperparameters["learning_rate"],
        log_weight_jitter_sd=_jitter_sd(begin),
        optimizer=fit_optimizer(plan, begin.epoch),
    )
    chunks = _Chunks(observer, begin, final_epoch=begin.epoch + plan.epochs)
    holdout = None
    completed = False
    try:
        with chunks.stop:
            if begin.split is not None and plan.holdout is not None:  # the split is made from the plan
                progress = _holdout_progress(begin)
                chunks.holdout = progress
                holdout = fit_with_holdout(
                    begin.model,
                    begin.package,
                    begin.split,
                    objective,
                    key=begin.key,
                    epochs=plan.epochs,
                    eval_every=plan.chunk_epochs,
                    patience=plan.holdout.patience,
                    min_delta=plan.holdout.min_delta,
                    callback=lambda result, row: chunks(result),
                    progress=progress,
                    opt_state=begin.opt_state,
                    start_epoch=begin.epoch,
                    **settings,
                )
                result = holdout.result
            else:
                matrix = _fit_matrix(begin)
                run = _fit_with_restarts if plan.pe_compat_adam_restarts else _fit_continuing
                result = run(begin, matrix, objective, plan.epochs, plan.chunk_epochs, chunks, settings)
                if plan.epochs == 0:
                    chunks(result)
        completed = True
    finally:
        observer.close(completed)
    early = holdout is not None and holdout.stop_reason == "early_stopping"
    return FitOutcome(
        result=result,
        losses=chunks.losses(),
        epochs=chunks.epoch,
        holdout=holdout,
        stopped_by=None if early else chunks.stop.requested_by,
        checkpoint=observer.checkpoint if isinstance(observer, Observers) else None,
    )


def _holdout_progress(begin: FitStart) -> HoldoutProgress:
    """A fresh held-out fit's progress, or the checkpoint's it continues."""
    if begin.holdout is None:
        return HoldoutProgress()
    saved = begin.holdout
    return HoldoutProgress.resumed(saved.log, saved.best_model, begin.best_opt_state, saved.best_epochs)


def fit_optimizer(plan: FitPlan, epochs_done: int) -> optax.GradientTransformation:
    """``plan.optimizer`` for a fit that ends ``plan.epochs`` after ``epochs_done`` (a schedule's
    horizon; a resumed schedule keeps the one its state holds)."""
    return optimizer_named(
        plan.optimizer, learning_rate=plan.hyperparameters["learning_rate"], epochs=max(epochs_done + plan.epochs, 1)
    )


def _jitter_sd(begin: FitStart) -> float:
    """policyengine-us-data's log-weight jitter: only on a fresh start, never on a resumed or
    warm-started one."""
    return PE_DEFAULTS.log_weight_jitter_sd if begin.source == "fresh" else 0.0


def _fit_matrix(begin: FitStart) -> AbstractTargetMatrix:
    """The package's matrix on the run's devices: split by records straight from the host copy."""
    if begin.mesh is None:
        return begin.package.target_matrix()
    return ShardedMatrix.from_scipy(begin.package.matrix, begin.mesh)


def _fit_continuing(
    begin: FitStart,
    matrix: AbstractTargetMatrix,
    objective: Objective,
    epochs: int,
    chunk: int,
    callback: Callable[[FitResult], bool],
    settings: dict[str, Any],
) -> FitResult:
    return fit(
        begin.model,
        matrix,
        begin.package.target_values,
        objective,
        key=begin.key,
        opt_state=begin.opt_state,
        start_epoch=begin.epoch,
        epochs=epochs,
        chunk_epochs=chunk,
        callback=callback,
        **settings,
    )


def _fit_with_restarts(
    begin: FitStart,
    matrix: AbstractTargetMatrix,
    objective: Objective,
    epochs: int,
    chunk: int,
    callback: Callable[[FitResult], bool],
    settings: dict[str, Any],
) -> FitResult:
    """policyengine-us-data's loop: one l0-python ``fit`` per log chunk, each with a fresh Adam
    (and a key folded with the chunk's first epoch); the log-weight jitter only in the first, as
    PolicyEngine sets it to 0 after it."""
    model, done = begin.model, 0
    while True:
        n = min(chunk, epochs - done)
        first = begin.epoch + done
        chunk_settings: dict[str, Any] = settings if done == 0 else {**settings, "log_weight_jitter_sd": 0.0}
        result = fit(
            model,
            matrix,
            begin.package.target_values,
            objective,
            key=jax.random.fold_in(begin.key, first),
            epochs=n,
            start_epoch=first,
            **chunk_settings,
        )
        model, done = result.model, done + n
        if (n > 0 and callback(result)) or done >= epochs:
            return result


class _Chunks:
    """The fits' callback: shows each chunk to the observer, keeps the losses (on the device until
    the end) and returns whether a signal asked the run to stop."""

    def __init__(self, observer: FitObserver, begin: FitStart, *, final_epoch: int) -> None:
        self.observer, self.final_epoch = observer, final_epoch
        self.epoch = begin.epoch
        self.parts: list[Array] = []
        self.stop = _StopOnSignal()
        self.estimate = _estimator(begin)
        self.holdout: HoldoutProgress | None = None
        """A held-out fit's progress, which says when early stopping ends the run."""

    def __call__(self, result: FitResult) -> bool:
        if result.epochs > self.epoch:
            self.parts.append(result.history.total[-(result.epochs - self.epoch) :])
        self.epoch = result.epochs
        stopping = self.stop.requested
        final = result.epochs == self.final_epoch or (self.holdout is not None and self.holdout.stopping)
        chunk = FitChunk(result, final=final, stopping=stopping, estimate=self.estimate, holdout=self.holdout)
        self.observer.chunk_done(chunk)
        return stopping

    def losses(self) -> Float[np.ndarray, " epochs"]:
        return np.concatenate([np.asarray(part) for part in self.parts]) if self.parts else np.zeros(0, np.float32)


def _estimator(begin: FitStart) -> Callable[[FitResult], Array]:
    """Every target's estimate from a chunk's result: its predictions, or with held-out targets
    (which the fit does not predict) the package's matrix times its weights, that matrix
    placed on the device the first time it is needed."""
    if begin.split is None:
        return lambda result: result.predictions
    matrix: list[TargetMatrix] = []

    def estimate(result: FitResult) -> Array:
        if not matrix:
            matrix.append(begin.package.target_matrix())
        return _mv(matrix[0], result.weights)

    return estimate


@eqx.filter_jit
def _mv(matrix: TargetMatrix, weights: Float[Array, " n_records"]) -> Float[Array, " n_targets"]:
    return matrix.mv(weights)


class _StopOnSignal:
    """SIGINT and SIGTERM, while inside, ask the fit to stop after the running chunk (only in the
    main thread, the one signals reach)."""

    def __init__(self) -> None:
        self.requested_by: str | None = None
        self.previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.requested_by is not None

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested_by = signal.Signals(signum).name


def _use_platform(device: str) -> None:
    """Make the requested platform's first device JAX's default (``auto``: JAX's choice)."""
    if device == "auto":
        return
    try:
        chosen = next(d for d in select_devices("all", device) if is_local(d))
    except ValueError as error:
        raise ValueError(f"--device {device}: {error}") from None
    jax.config.update("jax_default_device", chosen)


def _fit_mesh(plan: FitPlan) -> Mesh | None:
    """The devices the run splits the records over (``--devices``; every process's, across
    processes), or None for one device."""
    return None if plan.devices is None else _record_mesh(plan.devices, plan.device)


def _record_mesh(devices: int | str, platform: str) -> Mesh:
    try:
        return record_mesh(devices, platform)
    except ValueError as error:
        raise ValueError(f"--devices {devices}: {error}") from None


def _holdout_split(plan: FitPlan, package: CalibrationPackage) -> HoldoutSplit | None:
    if plan.holdout is None:
        return None
    columns = {"family_columns": (plan.holdout.family_column,)} if plan.holdout.family_column else {}
    return holdout_split(package.targets, fraction=plan.holdout.fraction, seed=plan.holdout.seed, **columns)


def _resume_source(plan: FitPlan, n_records: int) -> tuple[Checkpoint | None, np.ndarray | None]:
    """A checkpoint (given, or beside a weights .npy), or else weights to warm-start from."""
    path = plan.resume_from
    if path is None:
        raise ValueError("no --resume-from given")
    if not path.is_file():
        raise ValueError(f"--resume-from: {path} not found")
    if path.suffix == ".npz":
        return load_checkpoint(path), None
    sibling = checkpoint_path_for(path)
    if sibling.is_file():
        return load_checkpoint(sibling), None
    return None, load_weights(path, n_records, flag="--resume-from", kind="a checkpoint or a weights .npy")


def _check_checkpoint(plan: FitPlan, checkpoint: Checkpoint, signature: dict[str, Any], n_records: int) -> None:
    """That ``checkpoint`` continues this problem, with the gates, gate temperature, target groups
    and held-out split it was fitted with (a ``ValueError`` otherwise); warn of the hyperparameters
    the run changes and of a ``--seed`` the checkpoint's key makes moot."""
    differences = signature_differences(checkpoint.signature, signature)
    if differences:
        raise ValueError(
            f"the checkpoint {plan.resume_from} belongs to another problem: {', '.join(differences)} differ"
        )
    if checkpoint.model.n_records != n_records:
        raise ValueError(
            f"the checkpoint {plan.resume_from} holds {checkpoint.model.n_records} records' parameters, "
            f"but the package has {n_records} records"
        )
    hyper = plan.fit_hyperparameters()
    use_gates = hyper["lambda_l0"] > 0
    if checkpoint.model.use_gates != use_gates:
        raise ValueError(
            "cannot resume a fit with gates as one without (or back): keep --lambda-l0 on the same side of 0"
        )
    if use_gates and checkpoint.model.beta != hyper["beta"]:
        raise ValueError(
            f"the checkpoint's gates have temperature beta {checkpoint.model.beta:g}, this run asks for "
            f"{hyper['beta']:g}: a resumed fit keeps its gates' temperature, so resume with "
            f"--beta {checkpoint.model.beta:g} (or fit afresh)"
        )
    saved_optimizer = checkpoint.hyperparameters.get("optimizer", "pe-adam")
    if saved_optimizer != plan.optimizer:
        raise ValueError(f"the checkpoint was fitted with --optimizer {saved_optimizer}: resume it with that optimizer")
    if checkpoint.hyperparameters.get("target_groups", False) != plan.target_groups:
        raise ValueError(
            "the checkpoint was fitted "
            + ("without" if plan.target_groups else "with")
            + " target groups: resume it "
            + ("with --no-target-groups" if plan.target_groups else "without --no-target-groups")
        )
    saved_excluded = checkpoint.hyperparameters.get("exclude_from_fit", [])
    if saved_excluded != hyper.get("exclude_from_fit", []):
        raise ValueError(
            f"the checkpoint was fitted excluding {saved_excluded or 'no targets'}, this run excludes "
            f"{hyper.get('exclude_from_fit') or 'none'}: resume it with the --exclude-from-fit rules it was fitted with"
        )
    saved_split, split = checkpoint.hyperparameters.get("holdout"), hyper.get("holdout")
    if saved_split != split:
        raise ValueError(
            f"the checkpoint was fitted holding out {_split_text(saved_split)}, this run holds out "
            f"{_split_text(split)}: resume it with the --holdout-fraction, --holdout-seed (default --seed) and "
            "--holdout-family-column it was fitted with"
        )
    if split is not None:
        if checkpoint.holdout is None:
            raise ValueError(
                f"the checkpoint {plan.resume_from} holds no held-out progress (best epoch, held-out log), "
                "without which a held-out fit cannot resume where it stopped"
            )
        if any(set(row) != set(LOG_COLUMNS) for row in checkpoint.holdout.log):
            raise ValueError(f"the checkpoint {plan.resume_from}'s held-out log lacks columns of {list(LOG_COLUMNS)}")
    changed = [
        k
        for k in sorted(hyper)
        if k not in ("epochs", "target_groups", "optimizer", "beta", "holdout", "exclude_from_fit")
        and checkpoint.hyperparameters.get(k) != hyper[k]
    ]
    if changed:
        warnings.warn(
            "resuming with other hyperparameters than the checkpoint's: "
            + ", ".join(f"{k} {checkpoint.hyperparameters.get(k)} -> {hyper[k]}" for k in changed),
            stacklevel=2,
        )
    saved_seed = checkpoint.hyperparameters.get("seed")
    if saved_seed is not None and saved_seed != plan.seed:
        warnings.warn(
            f"--seed {plan.seed} is not used: a resumed fit continues its checkpoint's PRNG key (seed {saved_seed}), "
            "which the run record names",
            stacklevel=2,
        )


def _checkpoint_devices(plan: FitPlan, checkpoint: Checkpoint, devices: int) -> int | None:
    """The device count ``checkpoint`` was fitted on (its ``n_devices``; None in a checkpoint
    older than that record), with a warning when this run uses another."""
    saved = checkpoint.hyperparameters.get("n_devices")
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        return None
    if saved != devices:
        warnings.warn(
            f"resuming {plan.resume_from}, fitted on {saved} device{'s' if saved > 1 else ''}, on {devices}: "
            "the records' split changes only the order of the sums (the last digits of the weights); "
            "the run record keeps the checkpoint's count as checkpoint_devices",
            stacklevel=3,
        )
    return saved


def _split_text(split: dict[str, Any] | None) -> str:
    if split is None:
        return "no targets"
    return ", ".join(f"{name} {value}" for name, value in split.items())
