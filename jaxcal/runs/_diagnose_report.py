"""What ``jaxcal diagnose`` leaves behind: the per-target table, the hierarchy gaps, a figure of each
target's error at the start and at the optimum (all written atomically), and the terminal report."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from ..io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..workflow import BoundedLeastSquares, TargetDiagnosis

TARGET_DIAGNOSIS = "target_diagnosis"
"""Stem of the per-target ``.csv`` and the figure's ``.png``."""
TARGET_CONFLICTS = "target_conflicts.csv"
DIAGNOSE_FILES = (f"{TARGET_DIAGNOSIS}.csv", TARGET_CONFLICTS, f"{TARGET_DIAGNOSIS}.png")
"""What a diagnosis writes into its directory."""
_ERROR_FLOOR = 1e-6
"""Errors below this are drawn at it: a log axis has no zero."""
_LEVEL_COLOURS = {"national": "#d62728", "state": "#1f77b4", "district": "#2ca02c"}


def write_diagnosis(diagnosis: TargetDiagnosis, directory: str | os.PathLike) -> dict[str, str]:
    """Write :data:`DIAGNOSE_FILES` into ``directory``, each atomically; return their paths."""
    directory = pathlib.Path(directory)
    paths = dict(zip(("targets", "conflicts", "figure"), (directory / name for name in DIAGNOSE_FILES)))
    groups = diagnosis.groups.assign(
        children=[";".join(diagnosis.table["target_name"].to_numpy()[rows]) for rows in diagnosis.groups["child_rows"]]
    ).drop(columns=["parent_row", "child_rows"])
    atomic_write(paths["targets"], lambda f: diagnosis.table.to_csv(f, index=False), mode="w")
    atomic_write(paths["conflicts"], lambda f: groups.to_csv(f, index=False), mode="w")
    figure = diagnosis_figure(diagnosis)
    atomic_write(paths["figure"], lambda f: figure.savefig(f, format="png", dpi=100))
    return {kind: str(path) for kind, path in paths.items()}


def diagnosis_figure(diagnosis: TargetDiagnosis) -> Figure:
    """Every target's |relative error| at the starting weights (grey) and at the optimum (coloured
    by geography level), targets ranked by the latter, on a log axis: the targets at the left are
    those the others keep from being met; the gap down to the grey marks is what reweighting fixes."""
    from matplotlib.figure import Figure

    table = diagnosis.table
    optimum = np.abs(table["error_at_optimum"].to_numpy(np.float64))
    order = np.argsort(-optimum, kind="stable")
    rank = np.arange(1, len(order) + 1)
    start = np.maximum(np.abs(table["error_at_start"].to_numpy(np.float64))[order], _ERROR_FLOOR)
    levels = table["geo_level"].astype(str).to_numpy()[order]
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(rank, start, s=8, color="#bbbbbb", label="at the starting weights")
    for level in sorted(set(levels), key=lambda name: (name not in _LEVEL_COLOURS, name)):
        mine = levels == level
        axes.scatter(
            rank[mine],
            np.maximum(optimum[order][mine], _ERROR_FLOOR),
            s=10,
            color=_LEVEL_COLOURS.get(level),
            label=f"{level}, at the optimum",
        )
    axes.set(
        yscale="log",
        xlabel="target, ranked by its error at the optimum",
        ylabel="|relative error|",
        title=f"objective {diagnosis.start_objective:.3g} at the start, {diagnosis.optimum_objective:.3g} at the "
        f"optimum; mean |error| {100 * optimum.mean():.2f}% there",
    )
    axes.grid(alpha=0.3, which="major")
    figure.legend(loc="outside right center", fontsize="small")
    return figure


def format_diagnosis(diagnosis: TargetDiagnosis, *, top: int = 10, package_path: str | None = None) -> str:
    """The ranked report: objective and mean error at the start and at the optimum, the ``top``
    costliest targets, the impossible ones, the conflicting hierarchies and the warnings."""
    table = diagnosis.table
    optimum = diagnosis.optimum
    n_targets = len(table)
    lines = ["", "=== Target diagnosis ===", ""]
    if package_path:
        lines.append(f"Package: {package_path}")
    lines += [
        f"Matrix:  {n_targets:,} targets x {diagnosis.n_records:,} records, {diagnosis.nnz:,} nonzeros",
        f"Starting weights: {diagnosis.weights_source} (total {diagnosis.start_weights.sum():,.0f})",
        f"Objective, sum of squared relative errors: {diagnosis.start_objective:.6g} at the start, "
        f"{diagnosis.optimum_objective:.6g} at the optimum",
        f"Mean |relative error|: {_pct(np.abs(table['error_at_start']).mean())} at the start, "
        f"{_pct(np.abs(table['error_at_optimum']).mean())} at the optimum",
        _solver_line(optimum),
        "",
    ]
    costliest = diagnosis.costliest(top)
    if top and len(costliest):
        lines.append(f"--- Costliest targets at the optimum (top {len(costliest)} of {n_targets:,}) ---")
        lines.append(f"  {'rank':>4s} {'target':<60s} {'at start':>10s} {'at optimum':>10s} {'cost share':>10s}")
        for row in costliest.to_dict("records"):
            lines.append(
                f"  {row['cost_rank']:>4d} {_cut(row['target_name'], 60):<60s} {_pct(row['error_at_start']):>10s}"
                f" {_pct(row['error_at_optimum']):>10s} {_pct(row['cost_share']):>10s}"
            )
        lines.append("")
    impossible = diagnosis.impossible()
    lines.append(f"--- Impossible targets: {len(impossible):,} (all-zero row, or no entry of the target's sign) ---")
    for row in impossible.head(max(top, 0)).to_dict("records"):
        reason = "all-zero row" if row["support_records"] == 0 else "sign mismatch"
        lines.append(f"  {_cut(row['target_name'], 60):<60s} {row['value']:>16,.0f}  {reason}")
    lines.append("")
    conflicts = diagnosis.conflicts()
    gaps = diagnosis.groups[np.abs(diagnosis.groups["gap"]) > diagnosis.gap_tolerance]
    lines.append(
        f"--- Conflicting hierarchies: {len(conflicts):,} of {len(diagnosis.groups):,} parent targets whose children "
        f"sum more than {_pct(diagnosis.gap_tolerance)} off ({len(gaps) - len(conflicts):,} more off, but not "
        "proven by the matrix) ---"
        if len(diagnosis.groups)
        else "--- Conflicting hierarchies: none (no target has children: the same variable, domain and "
        "constraints at a lower geography level) ---"
    )
    for row in conflicts.head(max(top, 0)).to_dict("records"):
        direction = "exceed" if row["gap"] > 0 else "fall short of"
        lines.append(
            f"  {_cut(row['parent'], 50):<50s} {row['n_children']:>4d} {row['child_level']} targets {direction} it "
            f"by {_pct(abs(row['gap']))} ({row['children_sum']:,.0f} vs {row['parent_value']:,.0f}; {row['relation']})"
        )
    lines.append("")
    magnitude = diagnosis.magnitude_warnings()
    lines.append(f"--- Off by an order of magnitude or more at the start: {len(magnitude):,} ---")
    for row in magnitude.head(max(top, 0)).to_dict("records"):
        lines.append(
            f"  {_cut(row['target_name'], 60):<60s} estimate {row['estimate_at_start']:>14,.0f}"
            f" vs {row['value']:>14,.0f} (log10 {row['log10_ratio']:+.2f})"
        )
    lines.append("")
    support = diagnosis.support_warnings()
    lines.append(f"--- Supported by fewer than 1% of records: {len(support):,} ---")
    for row in support.head(max(top, 0)).to_dict("records"):
        lines.append(
            f"  {_cut(row['target_name'], 60):<60s} {row['support_records']:>9,d} records"
            f" ({_pct(row['support_share'])}, {_pct(row['support_weight_share'])} of the starting weight)"
        )
    return "\n".join(lines)


def _solver_line(optimum: BoundedLeastSquares) -> str:
    if optimum.method == "nnls":
        return f"Solver: exact (scipy.optimize.nnls on the dense matrix), {optimum.seconds:.1f}s"
    head = f"Solver: interior point, {optimum.iterations} Newton steps, {optimum.seconds:.1f}s, "
    if optimum.converged:
        return head + f"converged (every error within {optimum.accuracy:.1e} of the optimum's)"
    bound = (
        f"errors within {optimum.accuracy:.1e} of the optimum's" if np.isfinite(optimum.accuracy) else "no bound yet"
    )
    return head + f"NOT converged ({bound}; raise --max-iterations)"


def _pct(share: float) -> str:
    return f"{100 * share:.2f}%"


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle: a PolicyEngine target name says
    its place and variable first and its constraints last."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]
