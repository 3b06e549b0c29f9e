"""Time one calibration epoch (forward, backward, Adam step): jaxcal vs l0-python vs scipy.

For every size, each implementation runs in its own freshly spawned process, one after the
other, so that its peak RSS is its own and no two timings overlap. Every process builds the
same deterministic problem first, so that cost is in every peak alike. The scipy floor is
``X @ w`` plus ``X.T @ r`` on the CSR matrix, the two products an epoch cannot avoid.

    python benchmarks/epoch_speed.py --sizes small mp-300k --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from builders.synthetic_problem import SIZES, SyntheticProblem, policyengine_shaped_problem

# policyengine-us-data's settings.
MODEL = dict(init_weights=100.0, init_keep_prob=0.999, beta=0.35)
FIT = dict(lambda_l0=1e-8, lambda_l2=1e-12)
LEARNING_RATE = 0.15
TIMED_CALLS = 3
"""jaxcal and scipy report the fastest of this many timed calls: the least disturbed one."""


def best_time(run: Callable[[], None]) -> float:
    run()  # Warm-up: compilation, caches.
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def floor_products(problem: SyntheticProblem, repeats: int) -> Callable[[], None]:
    """``repeats`` times scipy's ``X @ w`` plus ``X.T @ r``: the two products an epoch needs."""
    x, w, r = problem.matrix, problem.true_weights, problem.targets

    def products() -> None:
        for _ in range(repeats):
            x @ w
            x.T @ r

    return products


def scipy_floor(size: str, repeats: int) -> tuple[float, str]:
    """Seconds for ``X @ w`` plus ``X.T @ r``."""
    problem = policyengine_shaped_problem(SIZES[size])
    seconds = best_time(floor_products(problem, repeats)) / repeats
    return seconds, f"{problem.matrix.nnz:,} nonzeros, {problem.matrix.indices.dtype} indices"


def jaxcal_epoch(size: str, epochs: int, layout: str) -> tuple[float, str]:
    """Seconds per epoch of ``jaxcal.fit`` over ``epochs`` epochs, compilation excluded.

    The scipy floor is timed again right after, in this process, so that the ratio of the
    two does not depend on how busy the machine was in another process's minutes.
    """
    import jax

    import jaxcal

    problem = policyengine_shaped_problem(SIZES[size])
    matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix, layout=layout)
    init_key, fit_key = jax.random.split(jax.random.key(0))
    model = jaxcal.CalibrationWeights.init(matrix.n_records, key=init_key, **MODEL)

    def run() -> None:
        result = jaxcal.fit(
            model, matrix, problem.targets, key=fit_key, epochs=epochs,
            learning_rate=LEARNING_RATE, loss="relative", **FIT,
        )  # fmt: skip
        jax.block_until_ready(result)

    seconds = best_time(run) / epochs
    floor = best_time(floor_products(problem, epochs)) / epochs
    device = jax.devices()[0]
    return seconds, f"{device.platform}; {seconds / floor:.2f}x the scipy floor timed after it"


def l0_python_epoch(size: str, epochs: int) -> tuple[float, str]:
    """Seconds per epoch of l0-python's ``SparseCalibrationWeights.fit``, after one warm-up epoch."""
    import torch
    from l0.calibration import SparseCalibrationWeights

    warnings.filterwarnings("ignore", "Sparse invariant checks")  # l0-python's, on every fit

    problem = policyengine_shaped_problem(SIZES[size])
    model = SparseCalibrationWeights(problem.matrix.shape[1], **MODEL)

    def run(n: int) -> None:
        model.fit(
            problem.matrix, problem.targets, epochs=n, lr=LEARNING_RATE,
            loss_type="relative", **FIT,
        )  # fmt: skip

    run(1)  # Converts and caches the torch matrix.
    start = time.perf_counter()
    run(epochs)
    return (time.perf_counter() - start) / epochs, f"torch, {torch.get_num_threads()} threads"


def _measure(bench: Callable[..., tuple[float, str]], *args: object) -> tuple[float, str, float]:
    """Run ``bench`` and add this process's peak RSS in MiB."""
    seconds, note = bench(*args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return seconds, note, peak / (2**20 if sys.platform == "darwin" else 2**10)


def isolated(bench: Callable[..., tuple[float, str]], *args: object) -> tuple[float, str, float]:
    """``_measure(bench, *args)`` in a fresh process, waited for."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure, bench, *args).result()


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
    packages = ["jax", "jaxlib", "torch", "l0-python", "numpy", "scipy"]
    return "\n".join(
        [
            f"## Epoch speed, {datetime.datetime.now():%Y-%m-%d %H:%M}",
            "",
            f"- command: `{shlex.join(sys.orig_argv)}`",
            f"- machine: {_cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"- Python {platform.python_version()}, "
            + ", ".join(f"{p} {_version(p)}" for p in packages),
            "",
        ]
    )


def size_section(size: str, rows: list[tuple[str, int, tuple[float, str, float]]]) -> str:
    ms = {name: seconds * 1e3 for name, _, (seconds, _, _) in rows}
    lines = [
        f"### {size}: {SIZES[size]:,} records",
        "",
        "| implementation | ms/epoch | epochs timed | peak RSS (MiB) | notes |",
        "|---|--:|--:|--:|---|",
        *(
            f"| {name} | {ms[name]:.1f} | {n} | {peak:,.0f} | {note} |"
            for name, n, (_, note, peak) in rows
        ),
        "",
        f"jaxcal / scipy floor (separate processes): {ms['jaxcal'] / ms['scipy floor']:.2f}x; "
        f"jaxcal rows layout / interleaved: {ms['jaxcal (rows layout)'] / ms['jaxcal']:.2f}x"
        + (f"; l0-python / jaxcal: {ms['l0-python'] / ms['jaxcal']:.1f}x" if "l0-python" in ms else ""),
        "",
        "The scipy floor is two products, not an epoch. Every peak RSS includes building the "
        "problem, about the scipy row, and the others also their framework's import.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "mp-300k"])
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs for jaxcal (and scipy repeats)")
    parser.add_argument("--torch-epochs", type=int, default=3, help="timed epochs for l0-python")
    parser.add_argument("--skip-torch", action="store_true", help="do not run l0-python")
    parser.add_argument("--output", help="append the results as a markdown section to this file")
    args = parser.parse_args()
    if min(args.epochs, args.torch_epochs) < 1:
        parser.error("--epochs and --torch-epochs must be positive")
    if not args.skip_torch and not all(importlib.util.find_spec(m) for m in ("torch", "l0")):
        parser.error("l0-python needs torch and l0-python: pip install -e '.[parity]', or pass --skip-torch")

    sections = [header()]
    print(sections[0], flush=True)
    for size in args.sizes:
        benches = [
            ("scipy floor", args.epochs, scipy_floor, ()),
            ("jaxcal", args.epochs, jaxcal_epoch, ("interleaved",)),
            ("jaxcal (rows layout)", args.epochs, jaxcal_epoch, ("rows",)),
        ]
        if not args.skip_torch:
            benches.append(("l0-python", args.torch_epochs, l0_python_epoch, ()))
        rows = []
        for name, n, bench, extra in benches:
            print(f"{size}: {name}...", file=sys.stderr, flush=True)
            rows.append((name, n, isolated(bench, size, n, *extra)))
        sections.append(size_section(size, rows))
        print(sections[-1], flush=True)
    if args.output:
        with open(args.output, "a") as out:
            out.write("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
