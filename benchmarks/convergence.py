"""Convergence of a fit: objective against epochs and wall time, PE's Adam and the alternatives,
against an optimum found independently.

policyengine-us-data's fit (jaxcal's default, exact to it) is full-batch Adam at a constant
0.15. For synthetic PolicyEngine-shaped problems (``builders.synthetic_problem``) this runs
each optimizer for the same epochs from the same start (PE's: weights 100, log-weight jitter
0.05) and evaluates, every ``--every`` epochs, the objective in float64 at the final weights
(deterministic gates), and the mean and median relative error ``|t - p| / (t + 1)``.

- **The optimum** f*. Gates off: ``scipy.optimize.lsq_linear`` on the rows scaled as the loss
  scales them (``sqrt(g) / (t + 1)``, ``g`` the target's loss weight), weights >= 0; these
  problems use ``lambda_l2 = 0``, since PE's 1e-12 makes the optimum of a reachable problem the
  minimum-norm fit (1e-12 * sum w^2, about 2e-4 at 20,000 records), a direction that no
  calibration cares about and that decides "within 1%" there. Gates on (PE's lambdas, the
  ``local`` preset): no solver knows the optimum, so f* is the best objective of any run,
  including a reference run of adam-cosine over ``--reference-factor`` times the epochs.
- **Within 1%**: f <= f* + 1% of max(f*, 1e-6 * sum(g)). The floor is the objective of every
  target 0.1% off, so that a reachable problem (f* about 0) asks for an error of 0.01%.
  "First" is the first evaluation within 1%, "settled" the first after which every later one
  is; "worst rise" is the largest increase between two evaluations after the first 10% of the
  epochs (Adam's first steps overshoot alike in every variant), in % of that scale; "gap in 1%
  bands" is (f - f*) / (1% of the scale): under 1 is within 1%.
- **Wall time** is the fit's alone (evaluations excluded), after a warm-up chunk that compiles.

Rows: ``pe-adam`` and ``adam-cosine`` are ``jaxcal.optimizer_named``'s; the others are Optax
transformations measured to choose them. Rows marked "own loop" need ``value``, ``grad`` and
``value_fn`` passed to ``update`` (``optax.lbfgs``, ``optax.contrib.reduce_on_plateau``),
which ``jaxcal.fit`` does not do: they run in a loop here that is the engine's step plus those
arguments.

    python benchmarks/convergence.py --output benchmarks/RESULTS.md
    python benchmarks/convergence.py --large --output benchmarks/RESULTS.md   # adds 100,000 records
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import sparse
from scipy.optimize import lsq_linear

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem
from jaxcal._fit import prepare_step

MODEL = dict(init_weights=100.0, init_keep_prob=0.999, beta=0.35)
"""PE's starting weights and gates (``jaxcal.PE_DEFAULTS``)."""
JITTER = 0.05
GATES = dict(lambda_l0=1e-8, lambda_l2=1e-12)
"""PE's penalties with gates (the ``local`` preset's lambda_l0)."""
WITHIN = 0.01
FLOOR = 1e-6
"""The objective scale of a reachable problem, per unit of loss weight: every target 0.1% off."""


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    description: str
    matrix: sparse.csr_array
    targets: np.ndarray
    groups: np.ndarray
    lambda_l0: float = 0.0
    lambda_l2: float = 0.0

    @property
    def gates(self) -> bool:
        return self.lambda_l0 > 0


def _shaped(n_records: int, n_states: int):
    return policyengine_shaped_problem(n_records, n_states=n_states)


def _aggregated(n_records: int, n_states: int, n_sums: int = 500, terms: int = 4, off: float = 0.05):
    """The problem plus ``n_sums`` rows that each add up ``terms`` of its rows, their targets
    ``off`` (relative sd) from the sum of theirs: totals that disagree with their parts, as
    PE's national, state and district targets from different sources do."""
    p = _shaped(n_records, n_states)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, p.matrix.shape[0], (n_sums, terms))
    sums = sparse.csr_array(
        (np.ones(picks.size), (np.repeat(np.arange(n_sums), terms), picks.ravel())),
        shape=(n_sums, p.matrix.shape[0]),
    )
    matrix = sparse.vstack([p.matrix, sums @ p.matrix]).tocsr().astype(np.float32)
    totals = (sums @ p.targets.astype(np.float64)) * (1 + off * rng.standard_normal(n_sums))
    groups = np.concatenate([p.target_groups, np.full(n_sums, p.target_groups.max() + 1)])
    return matrix, np.concatenate([p.targets, totals]), groups


def _exact(n_records: int, n_states: int):
    p = _shaped(n_records, n_states)
    return p.matrix, p.matrix @ p.true_weights.astype(np.float64), p.target_groups


def _noisy(n_records: int, n_states: int):
    p = _shaped(n_records, n_states)
    return p.matrix, p.targets, p.target_groups


PROBLEMS: dict[str, tuple[str, Callable[[], tuple[Any, Any, Any]], dict[str, float]]] = {
    "under-reachable": ("20,000 records, 10 states; PE's 2%-noise targets, reachable", lambda: _noisy(20_000, 10), {}),
    "under-inconsistent": (
        "20,000 records, 10 states, plus 500 sums of 4 rows 5% off their parts",
        lambda: _aggregated(20_000, 10),
        {},
    ),
    "over-exact": ("3,000 records, 10 states; targets X @ true weights exactly", lambda: _exact(3_000, 10), {}),
    "over-noisy": ("2,000 records, 10 states; PE's 2%-noise targets", lambda: _noisy(2_000, 10), {}),
    "gates-5k": ("5,000 records, 5 states, gates on (PE's lambdas)", lambda: _noisy(5_000, 5), GATES),
}
LARGE = {
    "pe-100k": ("100,000 records, 51 states (PE's shape); PE's 2%-noise targets", lambda: _noisy(100_000, 51), {}),
    "pe-100k-gates": ("100,000 records, 51 states, gates on (PE's lambdas)", lambda: _noisy(100_000, 51), GATES),
}


def build(name: str) -> Problem:
    description, make, penalties = (PROBLEMS | LARGE)[name]
    matrix, targets, groups = make()
    return Problem(name, description, sparse.csr_array(matrix), np.asarray(targets, np.float64), groups, **penalties)


@dataclasses.dataclass(frozen=True)
class Point:
    epochs: int
    seconds: float
    objective: float
    mean_error: float
    median_error: float


class Evaluate:
    """The objective in float64 and the relative errors, at a fit's final weights."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.x = problem.matrix.astype(np.float64)
        self.t = problem.targets
        self.g = np.asarray(jaxcal.target_loss_weights(self.t.size, problem.groups), np.float64)

    def __call__(self, weights: np.ndarray, l0: float = 0.0, l2: float = 0.0) -> tuple[float, float, float]:
        error = (self.t - self.x @ weights) / (self.t + 1)
        objective = float(np.sum(self.g * error**2)) + self.problem.lambda_l0 * l0 + self.problem.lambda_l2 * l2
        return objective, float(np.mean(np.abs(error))), float(np.median(np.abs(error)))

    def model(self, model: jaxcal.CalibrationWeights) -> tuple[float, float, float]:
        l2 = float(np.sum(np.exp(2 * np.asarray(model.log_weight, np.float64))))
        return self(np.asarray(model.deterministic_weights(), np.float64), float(model.l0_penalty()), l2)

    @property
    def scale(self) -> float:
        return FLOOR * float(self.g.sum())


def optimum(problem: Problem, evaluate: Evaluate) -> tuple[tuple[float, float, float], float, str]:
    """``((f*, mean error, median error), seconds, note)`` from ``lsq_linear`` on the scaled rows
    (gates off)."""
    scale = np.sqrt(evaluate.g) / (evaluate.t + 1)
    start = time.perf_counter()
    solution = lsq_linear(sparse.diags(scale) @ evaluate.x, scale * evaluate.t, bounds=(0, np.inf), lsmr_tol="auto")
    seconds = time.perf_counter() - start
    zeros = int(np.sum(solution.x <= 0))
    note = f"status {solution.status}, {solution.nit} iterations, {zeros:,} zero weights"
    return evaluate(solution.x), seconds, note


def _setup(problem: Problem) -> tuple[jaxcal.TargetMatrix, jaxcal.CalibrationWeights, jaxcal.Objective]:
    matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix.astype(np.float32))
    model = jaxcal.CalibrationWeights.init(matrix.n_records, key=jax.random.key(0), use_gates=problem.gates, **MODEL)
    objective = jaxcal.Objective.create(
        matrix.n_targets,
        lambda_l0=problem.lambda_l0,
        lambda_l2=problem.lambda_l2,
        target_groups=problem.groups,
    )
    return matrix, model, objective


class Clock:
    """Seconds spent in the fit, stopped while a callback evaluates."""

    def __init__(self) -> None:
        self.total = 0.0
        self.start = time.perf_counter()

    def stop(self, result: Any) -> float:
        jax.block_until_ready(result)
        self.total += time.perf_counter() - self.start
        return self.total

    def resume(self) -> None:
        self.start = time.perf_counter()


def engine_run(problem: Problem, evaluate: Evaluate, optimizer: optax.GradientTransformation, epochs: int, every: int):
    """``jaxcal.fit`` with ``optimizer``, ``every`` epochs a call, each continuing the last (the
    fit that never stopped, bitwise), evaluated between calls."""
    matrix, model, objective = _setup(problem)
    targets = problem.targets.astype(np.float32)

    def fit(n: int, last: jaxcal.FitResult | None) -> jaxcal.FitResult:
        return jaxcal.fit(
            model if last is None else last.model,
            matrix,
            targets,
            objective,
            key=jax.random.key(1),
            epochs=n,
            optimizer=optimizer,
            log_weight_jitter_sd=JITTER,
            opt_state=None if last is None else last.opt_state,
            start_epoch=0 if last is None else last.epochs,
        )

    jax.block_until_ready(fit(every, fit(every, None)))  # compiles (a state's first update may change its types)
    points = []
    clock = Clock()
    result = None
    for _ in range(epochs // every):
        result = fit(every, result)
        seconds = clock.stop(result)
        points.append(Point(result.epochs, seconds, *evaluate.model(result.model)))
        clock.resume()
    return points


@eqx.filter_jit
def _chunk_with_values(step: Any, model: Any, state: Any, epochs: Any, reuse: bool) -> tuple[Any, Any]:
    """The engine's epochs (``jaxcal._fit._Step``) with ``value``, ``grad`` and ``value_fn`` (the
    objective at this epoch's gates) passed to ``update``; ``reuse``: take them from an L-BFGS
    linesearch's state (``optax.value_and_grad_from_state``) instead of computing them again."""

    def epoch(carry: tuple[Any, Any], e: Any) -> tuple[tuple[Any, Any], None]:
        model, state = carry
        uniform = None
        if model.use_gates:
            key = step.matrix.record_key(jax.random.fold_in(step.draw_key, e))
            uniform = jax.random.uniform(key, (model.n_records,), model.log_weight.dtype)
        params, static = eqx.partition(model, eqx.is_array)

        def value_fn(p: Any) -> Any:
            return step.objective(eqx.combine(p, static), step.matrix, step.targets, uniform)[0]

        grad_fn = optax.value_and_grad_from_state(value_fn) if reuse else None
        value, grads = grad_fn(params, state=state) if grad_fn else jax.value_and_grad(value_fn)(params)
        updates, state = step.optimizer.update(grads, state, params, value=value, grad=grads, value_fn=value_fn)
        return (eqx.apply_updates(model, updates), state), None

    (model, state), _ = jax.lax.scan(epoch, (model, state), epochs)
    return model, state


def own_loop_run(
    problem: Problem,
    evaluate: Evaluate,
    optimizer: optax.GradientTransformation,
    epochs: int,
    every: int,
    reuse: bool = False,
):
    """``optimizer`` (one that needs the objective's value) from the engine's start and draws."""
    matrix, model, objective = _setup(problem)
    targets = jnp.asarray(problem.targets, jnp.float32)
    step, model, state = prepare_step(
        model,
        matrix,
        targets,
        objective,
        key=jax.random.key(1),
        optimizer=optimizer,
        learning_rate=None,
        opt_state=None,
        log_weight_jitter_sd=JITTER,
    )
    warm = _chunk_with_values(step, model, state, jnp.arange(every, dtype=jnp.int32), reuse)
    jax.block_until_ready(_chunk_with_values(step, *warm, jnp.arange(every, dtype=jnp.int32), reuse))  # compiles
    points = []
    clock = Clock()
    for first in range(0, epochs, every):
        model, state = _chunk_with_values(step, model, state, jnp.arange(first, first + every, dtype=jnp.int32), reuse)
        seconds = clock.stop(model)
        points.append(Point(first + every, seconds, *evaluate.model(model)))
        clock.resume()
    return points


def _fresh_init(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` with its initial state in buffers of its own: ``jaxcal.fit`` donates the
    state, and ``optax.scale_by_lbfgs`` starts two of its fields on one buffer."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.copy, optimizer.init(params)), optimizer.update)


def rows(problem: Problem, epochs: int) -> list[tuple[str, str, Callable[..., list[Point]]]]:
    """``(name, how it runs, run(problem, evaluate, epochs, every))`` for each optimizer."""

    def engine(optimizer: optax.GradientTransformation) -> Callable[..., list[Point]]:
        return lambda *args: engine_run(args[0], args[1], optimizer, *args[2:])

    def own(optimizer: optax.GradientTransformation, reuse: bool = False) -> Callable[..., list[Point]]:
        return lambda *args: own_loop_run(args[0], args[1], optimizer, *args[2:], reuse=reuse)

    found = [
        ("pe-adam (lr 0.15, PE's fit)", "jaxcal.fit", engine(jaxcal.optimizer_named("pe-adam"))),
        ("pe-adam at lr 0.05", "jaxcal.fit", engine(jaxcal.optimizer_named("pe-adam", learning_rate=0.05))),
        ("adam-cosine (lr 0.15 to 0)", "jaxcal.fit", engine(jaxcal.optimizer_named("adam-cosine", epochs=epochs))),
        (
            "Adam, exponential decay (half-life 200 epochs)",
            "jaxcal.fit",
            engine(optax.adam(optax.exponential_decay(0.15, 200, 0.5))),
        ),
        (
            "Adam + reduce_on_plateau (patience 10, factor 0.5)",
            "own loop",
            own(optax.chain(optax.adam(0.15), optax.contrib.reduce_on_plateau(patience=10, factor=0.5))),
        ),
        (
            "L-BFGS, no linesearch, steps clipped to 0.1",
            "jaxcal.fit",
            engine(_fresh_init(optax.chain(optax.scale_by_lbfgs(), optax.clip(0.1), optax.scale(-1.0)))),
        ),
    ]
    if not problem.gates:  # a linesearch on one epoch's random gates is not a search of the objective
        found.append(("optax.lbfgs (zoom linesearch)", "own loop", own(optax.lbfgs(), reuse=True)))
    return found


def first_within(points: list[Point], threshold: float) -> Point | None:
    return next((p for p in points if p.objective <= threshold), None)


def settled_within(points: list[Point], threshold: float) -> Point | None:
    """The first point after which the objective stays within ``threshold``."""
    settled = None
    for p in points:
        if p.objective > threshold:
            settled = None
        elif settled is None:
            settled = p
    return settled


def _when(point: Point | None) -> str:
    return "never" if point is None else f"{point.epochs:,} ({point.seconds:.2f} s)"


def _marks(points: list[Point], f_star: float, scale: float) -> str:
    """The gap to the optimum, in units of the 1% band, at a few epochs."""
    chosen = [p for p in points if p.epochs in (100, 300, 1000, 3000) or p is points[-1]]
    return ", ".join(f"{p.epochs:,}: {(p.objective - f_star) / (WITHIN * scale):.3g}" for p in chosen)


def run_problem(
    name: str, epochs: int, every: int, reference_factor: int, only: list[str] | None = None
) -> tuple[str, list[str]]:
    problem = build(name)
    evaluate = Evaluate(problem)
    runs = []
    for row, how, run in rows(problem, epochs):
        if only and not any(part in row for part in only):
            continue
        print(f"{name}: {row}...", file=sys.stderr, flush=True)
        runs.append((row, how, run(problem, evaluate, epochs, every)))
    if problem.gates:
        print(f"{name}: reference...", file=sys.stderr, flush=True)
        long = reference_factor * epochs
        reference = engine_run(problem, evaluate, jaxcal.optimizer_named("adam-cosine", epochs=long), long, every)
        f_star = min(p.objective for points in [reference] + [r[2] for r in runs] for p in points)
        source = (
            f"best of all runs, including adam-cosine over {long:,} epochs "
            f"({reference[-1].seconds:.1f} s, final {reference[-1].objective:.6g})"
        )
        optimum_row = None
    else:
        (f_star, *errors), seconds, note = optimum(problem, evaluate)
        source = f"scipy lsq_linear, {seconds:.1f} s ({note})"
        optimum_row = f"| optimum (lsq_linear) | scipy | 1 | 1 | - | - | - | {errors[0]:.2e} / {errors[1]:.2e} | - | {seconds:.1f} s |"
    scale = max(f_star, evaluate.scale)
    threshold = f_star + WITHIN * scale
    lines = [
        f"### {name}: {problem.description}",
        "",
        f"{problem.matrix.shape[0]:,} targets x {problem.matrix.shape[1]:,} records, {problem.matrix.nnz:,} nonzeros; "
        f"lambda_l0 {problem.lambda_l0:g}, lambda_l2 {problem.lambda_l2:g}; {epochs:,} epochs, evaluated every {every}.",
        f"Optimum f* = {f_star:.6g} ({source}); within 1%: f <= {threshold:.6g}"
        + ("." if f_star > 0.01 * evaluate.scale else "; f* is about 0, so the f / f* columns give f itself (f)."),
        "",
        "| optimizer | runs in | final f / f* | best f / f* | first within 1%: epochs (s) | settled within 1% from | "
        "worst rise (% of scale) | final mean / median rel. error | s per 100 epochs | gap in 1% bands at epochs |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    if optimum_row is not None:
        lines.append(optimum_row)
    summary = []
    for row, how, points in runs:
        last = points[-1]
        later = [p for p in points if p.epochs > epochs // 10]
        rises = [max(0.0, b.objective - a.objective) for a, b in zip(later, later[1:])]
        worst = 100 * max(rises, default=0.0) / scale
        ratio = (lambda f: f"{f / f_star:.4g}") if f_star > 0.01 * evaluate.scale else (lambda f: f"{f:.3g} (f)")
        lines.append(
            f"| {row} | {how} | {ratio(last.objective)} | {ratio(min(p.objective for p in points))} | "
            f"{_when(first_within(points, threshold))} | {_when(settled_within(points, threshold))} | {worst:.3g} | "
            f"{last.mean_error:.2e} / {last.median_error:.2e} | {100 * last.seconds / last.epochs:.2f} | "
            f"{_marks(points, f_star, scale)} |"
        )
        summary.append((row, first_within(points, threshold), settled_within(points, threshold), worst))
    lines.append("")
    return "\n".join(lines), [
        f"| {name} | {f_star:.4g} | {row} | {_when(first)} | {_when(settled)} | {worst:.3g} |"
        for row, first, settled, worst in summary
    ]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def header() -> str:
    packages = ["jax", "jaxlib", "optax", "numpy", "scipy"]
    return "\n".join(
        [
            f"## Convergence, {datetime.datetime.now():%Y-%m-%d %H:%M}",
            "",
            f"- command: `{shlex.join(sys.orig_argv)}`",
            f"- machine: {_cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}, jax on {jax.devices()[0].device_kind}",
            f"- Python {platform.python_version()}, " + ", ".join(f"{p} {_version(p)}" for p in packages),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS | LARGE), help="default: all but the large ones")
    parser.add_argument("--large", action="store_true", help="add the 100,000-record problems (tens of minutes)")
    parser.add_argument("--epochs", type=int, default=1000, help="epochs of every run without gates")
    parser.add_argument("--gates-epochs", type=int, default=3000, help="epochs of every run with gates")
    parser.add_argument("--every", type=int, default=10, help="evaluate after every this many epochs")
    parser.add_argument(
        "--reference-factor", type=int, default=4, help="gates on: the reference run's epochs, in --gates-epochs"
    )
    parser.add_argument("--optimizers", nargs="+", help="only the rows whose name contains one of these")
    parser.add_argument("--output", help="append the results as a markdown section to this file")
    args = parser.parse_args()
    if args.every < 1 or args.epochs % args.every or args.gates_epochs % args.every:
        parser.error("--every must be positive and divide --epochs and --gates-epochs")
    names = args.problems or list(PROBLEMS) + (list(LARGE) if args.large else [])
    sections = [header()]
    print(sections[0], flush=True)
    summary = []
    for name in names:
        epochs = args.gates_epochs if (PROBLEMS | LARGE)[name][2] else args.epochs
        section, lines = run_problem(name, epochs, args.every, args.reference_factor, args.optimizers)
        sections.append(section)
        summary += lines
        print(section, flush=True)
    table = [
        "### Summary: epochs (seconds) to within 1% of the optimum",
        "",
        "| problem | f* | optimizer | first within 1% | settled within 1% from | worst rise (% of scale) |",
        "|---|--:|---|--:|--:|--:|",
        *summary,
        "",
    ]
    sections.insert(1, "\n".join(table))
    print(sections[1], flush=True)
    if args.output:
        with open(args.output, "a") as out:
            out.write("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
