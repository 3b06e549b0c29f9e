"""Fit a PolicyEngine-shaped synthetic problem (100,000 records, ~16,000 targets) and print the result.

Run with `.venv/bin/python examples/quick_fit.py [--records N] [--epochs E] [--lambda-l0 L]`
(`make demo` or `make test` creates .venv).
"""

import argparse
import time

import jax
import numpy as np

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lambda-l0", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    problem = policyengine_shaped_problem(args.records, seed=args.seed)
    matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix)
    print(
        f"problem: {matrix.n_targets:,} targets x {matrix.n_records:,} records, "
        f"{matrix.nnz:,} nonzeros ({time.perf_counter() - start:.1f}s to build)"
    )

    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    # policyengine-us-data's settings (jaxcal.PE_DEFAULTS): beta 0.35, keep probability 0.999,
    # log-weight jitter 0.05, lambda_l2 1e-12, learning rate 0.15.
    defaults = jaxcal.PE_DEFAULTS
    model = jaxcal.CalibrationWeights.init(
        matrix.n_records, key=init_key, init_weights=100.0, init_keep_prob=defaults.init_keep_prob, beta=defaults.beta
    )
    objective = jaxcal.Objective.create(matrix.n_targets, loss="relative", lambda_l0=args.lambda_l0)

    def report(result: jaxcal.FitResult) -> None:
        error = relative_errors(result.predictions, problem.targets)
        print(
            f"  epoch {result.epochs:4d}  loss {float(result.history.total[-1]):10.4f}  "
            f"mean |rel err| {error.mean():7.2%}  records kept {result.n_active:,}"
        )

    start = time.perf_counter()
    result = jaxcal.fit(
        model,
        matrix,
        problem.targets,
        objective,
        key=fit_key,
        epochs=args.epochs,
        # PolicyEngine's Adam with its rate decaying to 0 over the epochs: unlike the constant
        # rate (fit's default, PolicyEngine's), it settles (benchmarks/RESULTS.md, "Convergence").
        optimizer=jaxcal.optimizer_named("adam-cosine", epochs=args.epochs),
        log_weight_jitter_sd=defaults.log_weight_jitter_sd,
        chunk_epochs=max(1, args.epochs // 5),
        callback=report,
    )
    elapsed = time.perf_counter() - start
    error = relative_errors(result.predictions, problem.targets)
    print(
        f"done in {elapsed:.1f}s ({elapsed / args.epochs * 1e3:.0f} ms/epoch incl. compile): "
        f"mean |rel err| {error.mean():.2%}, median {np.median(error):.2%}, "
        f"within 10%: {(error < 0.1).mean():.1%}, records kept {result.n_active:,} of {matrix.n_records:,}"
    )


def relative_errors(predictions, targets) -> np.ndarray:
    targets = np.asarray(targets, np.float64)
    return np.abs(np.asarray(predictions, np.float64) - targets) / np.maximum(np.abs(targets), 1.0)


if __name__ == "__main__":
    main()
