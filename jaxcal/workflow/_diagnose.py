"""Target diagnosis: which targets cannot be reached, which conflict with the rest, what each costs.

Before a fit, three questions decide whether a target deserves its place: can any non-negative
weights reach it alone (its row is not all zero and has an entry of the target's sign), how far
off the starting weights are (microcalibrate's order-of-magnitude and support checks), and what
it costs at the best any weights can do: the joint optimum of the row-scaled bounded least squares
``min ||(X w - t) / s||^2`` over ``w >= 0`` (``s = |t|``, so that each term is a relative error).
The residuals at that optimum are unique (the objective is strictly convex in ``X w``), even where
the weights are not, so a target's error there, and its share of the objective, say how much it
fights the others. Hierarchies of additive targets (counts, amounts) give the conflicts away
directly: a national target that is not the sum of its states' cannot be met with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import equinox as eqx
import numpy as np

from ..io import CalibrationPackage, policyengine_initial_weights

if TYPE_CHECKING:
    import pandas as pd
    from scipy import sparse

MAGNITUDE_ORDERS = 1.0
"""Flag a target whose starting estimate is off by at least this many orders of magnitude."""
MIN_SUPPORT_SHARE = 0.01
"""Flag a target supported by fewer than this share of the records (microcalibrate's 1%)."""
GAP_TOLERANCE = 0.01
"""Report a hierarchy whose children's sum differs from the parent by more than this share."""
MAX_ITERATIONS = 100
"""Newton steps of the interior-point solver at most (it needs 20 to 30)."""
SOLVER_TOLERANCE = 1e-3
"""The solver stops once no target's relative error can be further than this from its value at
the optimum (a bound from the duality gap): 0.1 percentage points."""
DENSE_CELLS = 2_000_000
"""Problems of at most this many matrix cells (targets x records) are solved by dense NNLS."""
LEVELS = ("national", "state", "district")
"""The geography levels a hierarchy has, top first; ``geographic_id`` is ``US``, the state FIPS
code, or the district GEOID ``state * 100 + district``."""
_TO_BOUNDARY = 0.995
"""The share of the way to the bound an interior-point step goes."""
_STALLED = 3
"""Newton steps without a better bound after which the solver stops: rounding has the last word."""


class BoundedLeastSquares(eqx.Module):
    """The optimum of ``min ||(X w - t) / s||^2, w >= 0``: weights and scaled residuals."""

    weights: np.ndarray
    residuals: np.ndarray
    """``(X w - t) / s`` at the optimum: each target's relative error there."""
    method: str
    """``nnls`` (exact, dense) or ``interior-point`` (sparse)."""
    iterations: int
    converged: bool
    accuracy: float
    """How far the residuals can still be from the optimum's (Euclidean norm, so each one's
    distance too): 0 for ``nnls``; else ``sqrt(2 * duality gap)`` (see :func:`_gap_bound`)."""
    seconds: float

    @property
    def objective(self) -> float:
        return float(self.residuals @ self.residuals)


def solve_bounded_least_squares(
    matrix: Any,
    values: Any,
    scale: Any,
    start: Any,
    *,
    max_iterations: int = MAX_ITERATIONS,
    tolerance: float = SOLVER_TOLERANCE,
    dense_cells: int = DENSE_CELLS,
    progress: Callable[[int, float], None] | None = None,
) -> BoundedLeastSquares:
    """Minimise ``||(X w - t) / scale||^2`` over ``w >= 0``; ``start`` scales the records.

    With ``A = diag(1/scale) X diag(c)`` (``c`` the starting weights, their mean where they are
    0) and ``w = c u``: up to ``dense_cells`` cells, Lawson and Hanson's NNLS
    (``scipy.optimize.nnls``) on the dense ``A``, exact. Above, Mehrotra's predictor-corrector
    interior-point method on ``min 0.5 ||A u - b||^2, u >= 0``: each Newton step solves
    ``(A^T A + S/U) du = h`` through Woodbury's identity as the targets x targets system
    ``(I + A Theta A^T) y = A Theta h``, ``Theta = U/S``, whose sparse LU (SuperLU) is cheap
    because records of one district share rows with its state and the nation only. First-order
    methods (FISTA, spectral gradient) and scipy's ``lsq_linear`` (trf) stall on hierarchies of
    targets, where the rows are nearly dependent (docs/diagnose.md). It stops once
    :attr:`BoundedLeastSquares.accuracy` is at most ``tolerance``, or after ``max_iterations``;
    ``progress`` is called after each Newton step with the step's number and the bound.
    """
    from scipy import optimize, sparse

    start_time = time.perf_counter()
    values = np.asarray(values, np.float64)
    scale = np.asarray(scale, np.float64)
    start = np.asarray(start, np.float64)
    positive = start > 0
    columns = np.where(positive, start, start[positive].mean() if positive.any() else 1.0)
    a = _scaled(sparse.csr_array(matrix), 1.0 / scale, columns)
    b = values / scale
    if values.size * start.size <= dense_cells:
        dense = a.toarray()
        try:
            u = optimize.nnls(dense, b, maxiter=max(50 * start.size, 1000))[0]
        except RuntimeError:  # out of iterations: the interior point below has no such limit
            pass
        else:
            return BoundedLeastSquares(
                weights=u * columns,
                residuals=dense @ u - b,
                method="nnls",
                iterations=0,
                converged=True,
                accuracy=0.0,
                seconds=time.perf_counter() - start_time,
            )
    u, iterations, accuracy = _interior_point(
        a, b, np.ones(start.size), max_iterations=max_iterations, tolerance=tolerance, progress=progress
    )
    return BoundedLeastSquares(
        weights=u * columns,
        residuals=a @ u - b,
        method="interior-point",
        iterations=iterations,
        converged=accuracy <= tolerance,
        accuracy=accuracy,
        seconds=time.perf_counter() - start_time,
    )


def _interior_point(
    a: sparse.csr_array,
    b: np.ndarray,
    u: np.ndarray,
    *,
    max_iterations: int,
    tolerance: float,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, int, float]:
    """``min 0.5 ||a u - b||^2, u >= 0`` by Mehrotra's predictor-corrector from ``u > 0``: the
    solution, the Newton steps taken and the final bound on the residuals' distance to the optimum's."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    n_targets, n_records = len(b), len(u)
    a_t = sparse.csr_array(a.T)  # products with a CSR transpose are twice as fast as with a's CSC view
    column_sums = a_t @ np.ones(n_targets)
    weighted = _csr(a.data.copy(), a)
    identity = sparse.eye_array(n_targets, format="csc")
    gradient = a_t @ (a @ u - b)
    s = np.maximum(gradient, 0.0) + 0.01 * max(1.0, float(np.abs(gradient).max(initial=0.0)))
    best, best_accuracy, iterations, stalled = u, np.inf, 0, 0
    while iterations < max_iterations and best_accuracy > tolerance and stalled < _STALLED:
        iterations += 1
        mu = u @ s / n_records
        theta = u / s
        np.multiply(a.data, theta[a.indices], out=weighted.data)
        try:
            system = splu(
                sparse.csc_array(weighted @ a_t) + identity,
                permc_spec="COLAMD",  # its ordering costs seconds where MMD_AT_PLUS_A costs minutes, for 1.4x the fill
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
        except RuntimeError:  # Theta under- or overflowed: the iterates are as good as rounding allows
            break
        dual_residual = gradient - s

        def newton(complementarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The step ``(du, ds)`` with ``A^T A du - ds = -dual_residual``, ``S du + U ds = complementarity``."""
            scaled = theta * (complementarity / u - dual_residual)
            du = scaled - theta * (a_t @ system.solve(a @ scaled))
            return du, (complementarity - s * du) / u

        du, ds = newton(-u * s)
        affine = (u + _step(u, du) * du) @ (s + _step(s, ds) * ds) / n_records
        du, ds = newton(-u * s + (affine / mu) ** 3 * mu - du * ds)
        step = _TO_BOUNDARY * min(_step(u, du), _step(s, ds))
        u, s = u + step * du, s + step * ds
        residual = a @ u - b
        gradient = a_t @ residual
        accuracy = _gap_bound(u, b, residual, gradient, column_sums)
        if accuracy < best_accuracy:
            best, best_accuracy, stalled = u, accuracy, 0
        elif np.isfinite(best_accuracy):
            stalled += 1
        if progress is not None:
            progress(iterations, best_accuracy)
    return best, iterations, best_accuracy


def _gap_bound(
    u: np.ndarray, b: np.ndarray, residual: np.ndarray, gradient: np.ndarray, column_sums: np.ndarray
) -> float:
    """A bound on ``||r - r*||`` for ``min 0.5 ||A u - b||^2, u >= 0`` at ``r = A u - b``.

    Its dual is ``max b.l - 0.5 ||l||^2`` over ``A^T l <= 0``, and the objective is 1-strongly
    convex in ``A u``, so ``0.5 ||r - r*||^2 <= P(u) - D(l)`` for any feasible ``l``. ``l = -r``
    is feasible when the gradient ``A^T r`` is non-negative (an interior point's is, but for
    rounding), with the gap ``P - D = u . A^T r``; else ``l = -(r + c 1)``, ``c`` the least shift
    that lifts every negative entry by ``c A^T 1``, adds ``c 1.(b + r) + c^2 m / 2``. Infinite when
    a column with a negative gradient sums to at most 0.
    """
    short = gradient < 0
    if (column_sums[short] <= 0).any():
        return np.inf
    shift = float(np.max(-gradient[short] / column_sums[short])) if short.any() else 0.0
    gap = u @ gradient + shift * float(np.sum(b + residual)) + 0.5 * shift**2 * len(b)
    return float(np.sqrt(2 * max(gap, 0.0)))


def _step(v: np.ndarray, dv: np.ndarray) -> float:
    """The longest step in ``[0, 1]`` along ``dv`` that keeps ``v`` non-negative."""
    shrinking = dv < 0
    return min(1.0, float(np.min(-v[shrinking] / dv[shrinking]))) if shrinking.any() else 1.0


class TargetDiagnosis(eqx.Module):
    """Per-target diagnosis (``table``), hierarchy gaps (``groups``) and the optimum behind them."""

    table: pd.DataFrame
    """One row per target: see docs/diagnose.md for the columns."""
    groups: pd.DataFrame
    """One row per parent target and child level: the children's sum against the parent."""
    optimum: BoundedLeastSquares
    start_weights: np.ndarray
    weights_source: str
    n_records: int
    nnz: int
    gap_tolerance: float

    @property
    def start_objective(self) -> float:
        error = self.table["error_at_start"].to_numpy()
        return float(error @ error)

    @property
    def optimum_objective(self) -> float:
        return self.optimum.objective

    def impossible(self) -> pd.DataFrame:
        """Targets no non-negative weights can reach, even alone."""
        return self.table.loc[~self.table["reachable_alone"].to_numpy(bool)]

    def costliest(self, k: int) -> pd.DataFrame:
        """The ``k`` reachable targets with the largest share of the optimum's objective: those that
        conflict with the rest (an impossible target's cost is its own, whatever the others)."""
        costly = self.table.loc[
            (self.table["cost_share"].to_numpy() > 0) & self.table["reachable_alone"].to_numpy(bool)
        ]
        return costly.sort_values("cost_share", ascending=False, kind="stable").head(k)

    def conflicts(self) -> pd.DataFrame:
        """Hierarchies whose parent and children no non-negative weights can meet together."""
        return self.groups.loc[self.groups["conflict"].to_numpy(bool)].sort_values(
            "gap", key=_magnitude, ascending=False, kind="stable"
        )

    def magnitude_warnings(self) -> pd.DataFrame:
        return self.table.loc[self.table["magnitude_warning"].to_numpy(bool)].sort_values(
            "log10_ratio", key=_magnitude, ascending=False, kind="stable"
        )

    def support_warnings(self) -> pd.DataFrame:
        return self.table.loc[self.table["support_warning"].to_numpy(bool)].sort_values(
            "support_records", kind="stable"
        )


def starting_weights(package: CalibrationPackage, weights: Any = None) -> tuple[np.ndarray, str]:
    """The weights a diagnosis starts from, and where they came from: ``weights`` if given, else
    the package's initial weights, else PolicyEngine's initial-weight rule (what a fit starts from)."""
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (package.n_records,) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(
                f"the weights must be {package.n_records} finite non-negative numbers, got shape {weights.shape}"
            )
        return weights, "given weights"
    if package.initial_weights is not None:
        return np.asarray(package.initial_weights, np.float64), "the package's initial weights"
    return policyengine_initial_weights(package), "PolicyEngine's initial-weight rule"


def diagnose_targets(
    package: CalibrationPackage,
    weights: Any = None,
    *,
    gap_tolerance: float = GAP_TOLERANCE,
    max_iterations: int = MAX_ITERATIONS,
    tolerance: float = SOLVER_TOLERANCE,
    dense_cells: int = DENSE_CELLS,
    progress: Callable[[int, float], None] | None = None,
) -> TargetDiagnosis:
    """Diagnose every target of ``package`` at the starting weights (``weights``, else as
    :func:`starting_weights` says) and at the joint optimum of the bounded least squares
    (``progress``: :func:`solve_bounded_least_squares`'s)."""
    import pandas as pd

    if not gap_tolerance >= 0:
        raise ValueError(f"the gap tolerance must be a non-negative number, got {gap_tolerance}")
    if max_iterations < 1:
        raise ValueError(f"the solver needs at least 1 iteration, got {max_iterations}")
    if not tolerance > 0:
        raise ValueError(f"the solver tolerance must be positive, got {tolerance}")
    start, source = starting_weights(package, weights)
    matrix = package.matrix
    values = package.target_values
    n_records = package.n_records
    nonzero = matrix.data != 0
    support = _row_counts(matrix, nonzero)
    has_positive = _row_counts(matrix, matrix.data > 0) > 0
    has_negative = _row_counts(matrix, matrix.data < 0) > 0
    total_weight = start.sum()
    on_support = _csr(nonzero.astype(np.float64), matrix) @ start
    weight_share = on_support / total_weight if total_weight > 0 else np.zeros(len(values))
    x = _csr(matrix.data.astype(np.float64), matrix)
    estimate = x @ start

    # A zero target has no relative error: its residual is measured against its starting size.
    start_size = _csr(np.abs(x.data), x) @ start
    scale = np.where(values != 0, np.abs(values), np.where(start_size > 0, start_size, 1.0))
    optimum = solve_bounded_least_squares(
        x,
        values,
        scale,
        start,
        max_iterations=max_iterations,
        tolerance=tolerance,
        dense_cells=dense_cells,
        progress=progress,
    )
    residual = optimum.residuals
    cost = residual**2
    total_cost = cost.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        log10_ratio = np.where(
            values != 0, np.log10(np.abs(estimate) / np.abs(values)), np.where(estimate != 0, np.inf, 0.0)
        )
    rank = np.empty(len(values), np.int64)
    rank[np.argsort(-cost, kind="stable")] = np.arange(1, len(values) + 1)
    groups = hierarchy_gaps(package, tolerance=gap_tolerance)
    children_gap = np.full(len(values), np.nan)
    in_conflict = np.zeros(len(values), bool)
    for parent, children, gap, conflict in zip(
        groups["parent_row"], groups["child_rows"], groups["gap"], groups["conflict"]
    ):
        children_gap[parent] = gap
        if conflict:
            in_conflict[[parent, *children]] = True
    targets = package.targets
    table = pd.DataFrame(
        {
            "target_name": package.target_names,
            "variable": targets["variable"].to_numpy(),
            "geo_level": targets["geo_level"].to_numpy(),
            "geographic_id": targets["geographic_id"].to_numpy(),
            "domain_variable": targets["domain_variable"].to_numpy(),
            "value": values,
            "support_records": support,
            "support_share": support / n_records if n_records else np.zeros(len(values)),
            "support_weight_share": weight_share,
            "estimate_at_start": estimate,
            "error_at_start": (estimate - values) / scale,
            "log10_ratio": log10_ratio,
            "magnitude_warning": np.abs(log10_ratio) >= MAGNITUDE_ORDERS,
            "support_warning": support < MIN_SUPPORT_SHARE * n_records,
            "reachable_alone": (values == 0) | ((values > 0) & has_positive) | ((values < 0) & has_negative),
            "estimate_at_optimum": x @ optimum.weights,
            "error_at_optimum": residual,
            "cost_share": cost / total_cost if total_cost > 0 else np.zeros(len(values)),
            "cost_rank": rank,
            "children_gap": children_gap,
            "in_conflict": in_conflict,
        }
    )
    return TargetDiagnosis(
        table=table,
        groups=groups,
        optimum=optimum,
        start_weights=start,
        weights_source=source,
        n_records=n_records,
        nnz=package.nnz,
        gap_tolerance=gap_tolerance,
    )


def hierarchy_gaps(package: CalibrationPackage, *, tolerance: float = GAP_TOLERANCE) -> pd.DataFrame:
    """Compare each parent target with the sum of its children at the next level present.

    Targets are matched by ``variable``, ``domain_variable`` and the constraints their name ends
    with (PolicyEngine's ``[...]``, e.g. an AGI bracket); a district's state is its GEOID // 100.
    A key with two targets at one place is ambiguous and left out. ``gap`` is
    ``(children's sum - parent) / |parent|``. Where it exceeds ``tolerance`` the rows tell whether
    that is a conflict: ``relation`` is ``partition`` when the parent's row is the sum of its
    children's (then no weights meet both), ``nested`` when it is at least that sum everywhere
    (then children above the parent cannot be met), else ``other`` (the values alone prove
    nothing). ``conflict`` marks the groups proven impossible.
    """
    import pandas as pd

    targets = package.targets
    names = package.target_names
    values = package.target_values
    level_of = {name: i for i, name in enumerate(LEVELS)}
    families: dict[tuple[str, str, str], dict[tuple[int, int], list[int]]] = {}
    for row, (variable, domain, level, geographic_id) in enumerate(
        zip(targets["variable"], targets["domain_variable"], targets["geo_level"], targets["geographic_id"])
    ):
        place = _place(geographic_id)
        if str(level) not in level_of or place is None:
            continue
        key = (str(variable), "" if pd.isna(domain) else str(domain), _constraint(names[row]))
        families.setdefault(key, {}).setdefault((level_of[str(level)], place), []).append(row)

    records = []
    for (variable, domain, _), nodes in sorted(families.items()):
        if any(len(rows) > 1 for rows in nodes.values()):
            continue  # two targets at one place: which is whose parent is ambiguous
        present = sorted({level for level, _ in nodes})
        for parent_level, child_level in zip(present, present[1:]):
            children: dict[int, list[int]] = {}
            for (level, place), (row,) in nodes.items():
                if level == child_level:
                    children.setdefault(_ancestor(place, child_level, parent_level), []).append(row)
            for place, rows in sorted(children.items()):
                if (parent_level, place) not in nodes:
                    continue
                (parent,) = nodes[(parent_level, place)]
                children_sum = float(values[rows].sum())
                records.append(
                    {
                        "parent": names[parent],
                        "variable": variable,
                        "domain_variable": domain,
                        "parent_level": LEVELS[parent_level],
                        "child_level": LEVELS[child_level],
                        "n_children": len(rows),
                        "parent_value": values[parent],
                        "children_sum": children_sum,
                        "gap": _gap(children_sum, values[parent]),
                        "parent_row": parent,
                        "child_rows": np.array(sorted(rows)),
                    }
                )
    columns = [
        "parent",
        "variable",
        "domain_variable",
        "parent_level",
        "child_level",
        "n_children",
        "parent_value",
        "children_sum",
        "gap",
        "parent_row",
        "child_rows",
    ]
    groups = pd.DataFrame.from_records(records, columns=columns)
    gaps = np.array([record["gap"] for record in records], np.float64)
    beyond = np.abs(gaps) > tolerance
    relation = np.full(len(records), "", dtype=object)
    relation[beyond] = _relations(
        package.matrix,
        [record["parent_row"] for record, off in zip(records, beyond) if off],
        [record["child_rows"] for record, off in zip(records, beyond) if off],
    )
    groups["relation"] = relation
    groups["conflict"] = beyond & ((relation == "partition") | ((relation == "nested") & (gaps > 0)))
    return groups


def _relations(matrix: sparse.csr_array, parents: list[int], children: list[np.ndarray]) -> list[str]:
    """How each parent's row compares with the sum of its children's rows."""
    from scipy import sparse

    if not parents:
        return []
    sizes = np.array([rows.size for rows in children])
    select = sparse.csr_array(
        (np.ones(sizes.sum()), (np.repeat(np.arange(len(parents)), sizes), np.concatenate(children))),
        shape=(len(parents), len(matrix.indptr) - 1),
    )
    rows = _csr(matrix.data.astype(np.float64), matrix)
    parent = rows[np.array(parents)]
    difference = sparse.csr_array(parent - select @ rows)
    size = np.asarray(abs(parent).sum(axis=1)).ravel()
    off = np.asarray(abs(difference).sum(axis=1)).ravel()
    below = _row_counts(difference, difference.data < -1e-6 * np.repeat(size, np.diff(difference.indptr))) > 0
    return ["partition" if o <= 1e-6 * s else "nested" if not b else "other" for o, s, b in zip(off, size, below)]


def _scaled(matrix: sparse.csr_array, row_scale: np.ndarray, column_scale: np.ndarray) -> sparse.csr_array:
    """``diag(row_scale) @ matrix @ diag(column_scale)`` without a product of sparse matrices."""
    counts = np.diff(matrix.indptr)
    data = matrix.data * np.repeat(row_scale, counts) * column_scale[matrix.indices]
    return _csr(data, matrix)


def _csr(data: np.ndarray, like: sparse.csr_array) -> sparse.csr_array:
    """A CSR matrix with ``like``'s pattern and these values."""
    from scipy import sparse

    return sparse.csr_array((data, like.indices, like.indptr), shape=like.shape)


def _row_counts(matrix: sparse.csr_array, mask: np.ndarray) -> np.ndarray:
    """How many stored entries of each row ``mask`` (one flag per stored entry) marks."""
    cumulative = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return cumulative[matrix.indptr[1:]] - cumulative[matrix.indptr[:-1]]


def _constraint(name: str) -> str:
    """The ``[...]`` a PolicyEngine target name ends with (its non-geographic constraints), or ''."""
    return name[name.rfind("[") :] if name.endswith("]") and "[" in name else ""


def _place(geographic_id: Any) -> int | None:
    """``US`` as 0, a state or district code as its number; None for anything else."""
    if str(geographic_id) == "US":
        return 0
    try:
        return int(geographic_id)
    except (TypeError, ValueError):
        return None


def _ancestor(place: int, level: int, ancestor_level: int) -> int:
    """The place at ``ancestor_level`` that contains ``place`` (at ``level``)."""
    if ancestor_level == 0:
        return 0
    return place // 100 if level == 2 and ancestor_level == 1 else place


def _magnitude(column: pd.Series) -> pd.Series:
    return column.abs()


def _gap(children_sum: float, parent: float) -> float:
    if parent != 0:
        return (children_sum - parent) / abs(parent)
    return 0.0 if children_sum == 0 else float(np.copysign(np.inf, children_sum))
