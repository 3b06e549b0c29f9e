"""Observers of a fit run: what happens after each chunk of epochs (progress, logs, checkpoints).

An observer sees a :class:`FitChunk`, whose numbers are computed on the device once and copied
to the host only when an observer reads them: the ``n_targets`` estimates for a progress line
or a log row, the parameters only when a checkpoint is written.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..io import save_checkpoint
from ..io._files import commit, sync, temporary_file
from ..workflow import relative_errors

if TYPE_CHECKING:
    from jaxtyping import Array, PRNGKeyArray

    from .._fit import FitResult
    from ..io import CalibrationPackage
    from ..workflow._holdout import HoldoutProgress

PE_LOG_COLUMNS = (
    "target_name",
    "estimate",
    "target",
    "epoch",
    "error",
    "rel_error",
    "abs_error",
    "rel_abs_error",
    "loss",
    "achievable",
)
"""policyengine-us-data's ``calibration_log.csv`` columns."""
MICROCALIBRATE_LOG_COLUMNS = (
    "epoch",
    "loss",
    "target_name",
    "target",
    "estimate",
    "error",
    "abs_error",
    "rel_abs_error",
)
"""microcalibrate's dashboard's columns (after an unnamed row index)."""


class FitChunk:
    """The fit after a chunk of epochs, as observers see it.

    ``result`` is the fit so far (on the train targets when some are held out); its ``model``
    and ``opt_state`` are donated to the next chunk, so copy what you keep. ``final``: the
    last chunk of the run (the last epoch it asked for, or early stopping's); ``stopping``: a
    signal asked the run to stop after this one; ``holdout``: a held-out fit's progress.
    The properties are computed once, on the device, and copied to the host when read.
    """

    def __init__(
        self,
        result: FitResult,
        *,
        final: bool,
        stopping: bool,
        estimate: Callable[[FitResult], Array],
        holdout: HoldoutProgress | None = None,
    ) -> None:
        self.result, self.final, self.stopping, self.holdout = result, final, stopping, holdout
        self._estimate = estimate

    @property
    def epoch(self) -> int:
        """Epochs done since the fit first started."""
        return self.result.epochs

    @functools.cached_property
    def loss(self) -> float:
        """The objective of the chunk's last epoch (NaN for a run of no epochs)."""
        total = self.result.history.total
        return float(total[-1]) if total.size else math.nan

    @functools.cached_property
    def n_active(self) -> int:
        return self.result.n_active

    @functools.cached_property
    def estimates(self) -> np.ndarray:
        """``X @ weights`` for every target of the package, held-out ones too (float64)."""
        return np.asarray(self._estimate(self.result), np.float64)


class FitObserver(Protocol):
    """Called after every chunk of a run; closed when the run ends (``completed``: no error)."""

    def chunk_done(self, chunk: FitChunk) -> None: ...

    def close(self, completed: bool) -> None: ...


class Observers:
    """Several observers, called in order."""

    def __init__(self, observers: Sequence[FitObserver]) -> None:
        self.observers = tuple(observers)

    @property
    def checkpoint(self) -> pathlib.Path | None:
        """The checkpoint this run wrote (through a :class:`Checkpoints` observer), if any."""
        written = (o.written for o in self.observers if isinstance(o, Checkpoints))
        return next((path for path in written if path is not None), None)

    def chunk_done(self, chunk: FitChunk) -> None:
        for observer in self.observers:
            observer.chunk_done(chunk)

    def close(self, completed: bool) -> None:
        for observer in self.observers:
            observer.close(completed)


class Progress:
    """The live line: a rich progress bar on a terminal, plain lines on stderr elsewhere, nothing when quiet."""

    def __init__(self, package: CalibrationPackage, total: int, *, quiet: bool = False) -> None:
        self.targets, self.n_records, self.total, self.quiet = package.target_values, package.n_records, total, quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from rich import progress as rich

            self.bar = rich.Progress(
                rich.TextColumn("epoch"),
                rich.MofNCompleteColumn(),
                rich.BarColumn(),
                rich.TextColumn("{task.fields[status]}"),
                rich.TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("fit", total=total, status="compiling")
            self.bar.start()

    def chunk_done(self, chunk: FitChunk) -> None:
        if self.quiet:
            return
        mean_error = float(np.abs(relative_errors(chunk.estimates, self.targets)).mean())
        status = f"loss {chunk.loss:.4g}  mean rel err {mean_error:.2%}  active {chunk.n_active:,}/{self.n_records:,}"
        if self.bar is not None:
            self.bar.update(self.task, completed=chunk.epoch, status=status)
        else:
            print(f"epoch {chunk.epoch:>6d}/{self.total}  {status}", file=sys.stderr, flush=True)

    def close(self, completed: bool) -> None:
        if self.bar is not None:
            self.bar.stop()


class CalibrationLog:
    """``calibration_log.csv``: every target after every chunk, in PolicyEngine's or microcalibrate's
    columns; appended to a temporary file of this run's own that is synced and renamed into place
    when the run ends (and removed when it fails)."""

    def __init__(self, path: str | os.PathLike, package: CalibrationPackage, log_format: str = "pe") -> None:
        self.path, self.format = pathlib.Path(path), log_format
        self.targets = package.target_values
        self.names = np.asarray(package.target_names, dtype=object)
        self.achievable = package.row_sums() > 0
        self.rows_written = 0
        self.columns = list(PE_LOG_COLUMNS) if log_format == "pe" else list(MICROCALIBRATE_LOG_COLUMNS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.partial = temporary_file(self.path, ".partial", "w")
        self.file.write(",".join(self.columns if log_format == "pe" else ["", *self.columns]) + "\n")

    def chunk_done(self, chunk: FitChunk) -> None:
        import pandas as pd

        estimates = chunk.estimates
        error = estimates - self.targets
        # PolicyEngine's log divides by the target itself, 0 where it is 0.
        rel_error = np.divide(error, self.targets, out=np.zeros_like(error), where=self.targets != 0)
        table = pd.DataFrame(
            {
                "target_name": self.names,
                "estimate": estimates,
                "target": self.targets,
                "epoch": chunk.epoch,
                "error": error,
                "rel_error": rel_error,
                "abs_error": np.abs(error),
                "rel_abs_error": np.abs(rel_error),
                "loss": rel_error**2,
                "achievable": self.achievable,
            }
        )[self.columns]
        if self.format == "microcalibrate":
            table.index += self.rows_written
        table.to_csv(self.file, header=False, index=self.format == "microcalibrate")
        self.rows_written += len(table)

    def close(self, completed: bool) -> None:
        try:
            with self.file:
                if completed:
                    sync(self.file)
            if completed:
                commit(self.partial, self.path)
        finally:
            self.partial.unlink(missing_ok=True)


class Checkpoints:
    """A checkpoint after every chunk (``every_chunk``), else after the last one, and whenever the
    run is stopping; the parameters (and a held-out fit's progress) are copied to the host only
    then. ``written``: the path, once this run has written a checkpoint there."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: PRNGKeyArray,
        signature: dict[str, Any],
        hyperparameters: dict[str, Any],
        every_chunk: bool = False,
    ) -> None:
        self.path, self.key, self.signature, self.hyperparameters = pathlib.Path(path), key, signature, hyperparameters
        self.every_chunk = every_chunk
        self.written: pathlib.Path | None = None

    def chunk_done(self, chunk: FitChunk) -> None:
        if self.every_chunk or chunk.final or chunk.stopping:
            self.written = save_checkpoint(
                self.path,
                model=chunk.result.model,
                opt_state=chunk.result.opt_state,
                key=self.key,
                epochs=chunk.epoch,
                signature=self.signature,
                hyperparameters=self.hyperparameters,
                holdout=None if chunk.holdout is None else chunk.holdout.state(),
            )

    def close(self, completed: bool) -> None:
        pass
