"""The figures and logs a run writes beside its weights (matplotlib, written atomically)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from ..io import atomic_write, json_safe
from ._names import FRONTIER, HOLDOUT_LOG

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..workflow import HoldoutFit


def loss_curve_figure(losses: np.ndarray, start_epoch: int) -> Figure:
    """The objective by epoch (log scale when every value is positive)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100, layout="tight")
    axis = figure.add_subplot()
    epochs = np.arange(start_epoch + 1, start_epoch + len(losses) + 1)
    axis.plot(epochs, losses, color="#1f77b4")
    if len(losses) and np.all(np.asarray(losses) > 0):
        axis.set_yscale("log")
    axis.set(xlabel="epoch", ylabel="objective", title="jaxcal fit: objective by epoch")
    axis.grid(alpha=0.3)
    return figure


def write_loss_curve(path: str | os.PathLike, losses: np.ndarray, start_epoch: int) -> None:
    figure = loss_curve_figure(losses, start_epoch)
    atomic_write(path, lambda f: figure.savefig(f, format="png"))


def holdout_figure(holdout: HoldoutFit, title: str = "Train and held-out data loss by epoch") -> Figure:
    """The train and held-out loss per epoch, best epoch marked; ``title`` says which fit it is
    (the stopping epoch and reason follow it)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    log = holdout.log
    axes.plot(log["epoch"], log["train_loss"], label="train targets")
    axes.plot(log["epoch"], log["holdout_loss"], label="held-out targets")
    axes.axvline(holdout.best_epoch, color="grey", linestyle=":", label=f"best epoch {holdout.best_epoch}")
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("data loss (log scale)")
    reason = str(holdout.stop_reason).replace("_", " ")
    axes.set_title(f"{title}\nstopped at epoch {holdout.stopped_epoch} ({reason})")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def write_holdout_log(holdout: HoldoutFit, directory: str | os.PathLike, stem: str = HOLDOUT_LOG) -> dict[str, str]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.png`` (the two curves) atomically."""
    directory = pathlib.Path(directory)
    paths = {kind: directory / f"{stem}.{kind}" for kind in ("json", "csv", "png")}
    records = {"summary": holdout.summary(), "log": holdout.log.to_dict(orient="records")}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(json_safe(records), indent=2, allow_nan=False)), mode="w")
    atomic_write(paths["csv"], lambda f: holdout.log.to_csv(f, index=False), mode="w")
    figure = holdout_figure(holdout)
    atomic_write(paths["png"], lambda f: figure.savefig(f, format="png", dpi=100))
    return {kind: str(path) for kind, path in paths.items()}


def write_frontier(frontier: pd.DataFrame, directory: str | os.PathLike) -> dict[str, str]:
    """``frontier.csv`` and ``frontier.png`` (records kept vs train and held-out loss), atomically."""
    from matplotlib.figure import Figure

    directory = pathlib.Path(directory)
    paths = {kind: directory / f"{FRONTIER}.{kind}" for kind in ("csv", "png")}
    atomic_write(paths["csv"], lambda f: frontier.to_csv(f, index=False), mode="w")
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    for beta, rows in frontier.groupby("beta"):
        rows = rows.sort_values("records_kept")
        line = axes.plot(rows["records_kept"], rows["train_loss"], marker="o", label=f"train, beta {beta:g}")[0]
        for kept, loss, lam in zip(rows["records_kept"], rows["train_loss"], rows["lambda_l0"]):
            axes.annotate(f"{lam:.0e}", (kept, loss), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if bool(rows["holdout_loss"].notna().to_numpy().any()):
            axes.plot(
                rows["records_kept"],
                rows["holdout_loss"],
                marker="x",
                linestyle="--",
                color=line.get_color(),
                label=f"held out, beta {beta:g}",
            )
    axes.set_xlabel("records kept")
    axes.set_ylabel("data loss")
    axes.set_yscale("log")
    axes.set_title("jaxcal sweep: sparsity frontier (points labelled by lambda_l0)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    atomic_write(paths["png"], lambda f: figure.savefig(f, format="png", dpi=100))
    return {kind: str(path) for kind, path in paths.items()}
