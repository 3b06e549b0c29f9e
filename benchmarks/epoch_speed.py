"""Time one calibration epoch (forward, backward, Adam step): jaxcal vs l0-python vs scipy.

For every size, each implementation runs in its own freshly spawned process, one after the
other, so that its peak RSS is its own and no two timings overlap. Every process builds the
same deterministic problem first, so that cost is in every peak alike. The scipy floor is
``X @ w`` plus ``X.T @ r`` on the CSR matrix, the two products an epoch cannot avoid.

    python benchmarks/epoch_speed.py --sizes small mp-300k --output benchmarks/RESULTS.md

Every jaxcal row also reports the compiled epoch program's memory (arguments plus XLA's
temporaries; on a GPU or TPU the device's peak bytes in use). ``--chunk N`` adds the
memory-bounded kernels (a one-device :class:`jaxcal.ShardedMatrix` multiplying N nonzeros
at a time), ``--devices N`` a fit sharded over N devices, ``--kernels`` the two products
alone with the achieved bandwidth and ``indices_are_sorted`` on and off, ``--ftz-atomics``
the rows again under ``XLA_FLAGS=--xla_backend_extra_options=-nvptx-allow-ftz-atomics``
(the float32 scatter-add workaround of jax 0.10.2-0.11.0 on GPUs). On a GPU:

    python benchmarks/epoch_speed.py --device gpu --sizes mp-3m prod-5m --chunk 4194304 \\
        --kernels --ftz-atomics --skip-rows-layout --output benchmarks/RESULTS.md
    python benchmarks/epoch_speed.py --device gpu --sizes mp-30m --chunk 4194304 \\
        --skip-floor --skip-torch --skip-rows-layout --output benchmarks/RESULTS.md
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

from builders.synthetic_problem import SIZES as BUILDER_SIZES
from builders.synthetic_problem import SyntheticProblem, policyengine_shaped_problem

SIZES = BUILDER_SIZES | {"prod-5m": 5_000_000, "mp-30m": 30_000_000}
"""Records of each tier, about 50 nonzeros a record: prod-5m is the production matrix's size
(5M columns, 2.5e8 nonzeros); mp-30m needs about 70 GB of host memory to build."""
FTZ_ATOMICS = "--xla_backend_extra_options=-nvptx-allow-ftz-atomics"
PEAK_BANDWIDTH = {
    # Device kind (as jax names it) -> memory bandwidth in bytes/s, from the vendors' sheets.
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100-SXM4-80GB": 2.04e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA L4": 0.3e12,
    "Tesla T4": 0.32e12,
    "TPU v2": 0.7e12,
    "TPU v3": 0.9e12,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 0.82e12,
    "TPU v5e": 0.82e12,
    "TPU v5p": 2.76e12,
    "TPU v6 lite": 1.64e12,
}

# policyengine-us-data's settings (jaxcal.PE_DEFAULTS; the `local` preset's lambda_l0), written
# out so that this module does not import jaxcal (and JAX) before _environment has run.
MODEL = dict(init_weights=100.0, init_keep_prob=0.999, beta=0.35)
FIT = dict(lambda_l0=1e-8, lambda_l2=1e-12)
"""The objective's penalties (``jaxcal.Objective.create(..., **FIT)``) and l0-python's fit arguments."""
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


def _environment(platform: str, xla_flags: str) -> None:
    """Choose the backend and XLA flags; only before jax is imported in this process."""
    assert "jax" not in sys.modules, "set up the environment before importing jax"
    if platform != "auto":
        os.environ["JAX_PLATFORMS"] = platform.replace("gpu", "cuda")
    if xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()


def _compiled_memory(fit_module: object, run: Callable[[], None]) -> str:
    """``run()`` once, noting the memory XLA plans for the epoch program it compiles.

    ``fit_module._run_chunk`` is the one compiled chunk function of every fit, plain or
    sharded (the matrix decides where its blocks run); a spy lowers its first call."""
    import jax

    seen = []
    original = fit_module._run_chunk

    def spy(*args: object) -> object:
        if not seen:
            seen.append(original.lower(*args).compile().compiled.memory_analysis())
        return original(*args)

    fit_module._run_chunk = spy
    try:
        run()
    finally:
        fit_module._run_chunk = original
    plan = seen[0]
    note = (
        f"compiled: arguments {plan.argument_size_in_bytes / 2**30:.2f} GiB + "
        f"temporaries {plan.temp_size_in_bytes / 2**30:.2f} GiB"
    )
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        note += f"; device peak {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return note


def jaxcal_epoch(
    size: str,
    epochs: int,
    layout: str,
    chunk: int | None = None,
    devices: int | None = None,
    platform: str = "auto",
    xla_flags: str = "",
) -> tuple[float, str]:
    """Seconds per epoch of ``jaxcal.fit`` over ``epochs`` epochs, compilation excluded.

    With ``chunk`` or ``devices``, the matrix is a :class:`jaxcal.ShardedMatrix` over that
    many devices (default 1) multiplying ``chunk`` nonzeros at a time (default: all). The
    scipy floor is timed again right after, in this process, so that the ratio of the two
    does not depend on how busy the machine was in another process's minutes.
    """
    if devices and platform == "cpu":  # CPU devices for the sharded row: as many as asked
        xla_flags = f"{xla_flags} --xla_force_host_platform_device_count={devices}"
    _environment(platform, xla_flags)
    import jax

    import jaxcal
    from jaxcal import _fit

    problem = policyengine_shaped_problem(SIZES[size])
    if chunk is None and devices is None:
        matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix, layout=layout)
    else:
        mesh = jaxcal.record_mesh(devices or 1)
        matrix = jaxcal.ShardedMatrix.from_scipy(problem.matrix, mesh, layout=layout, chunk=chunk)
    init_key, fit_key = jax.random.split(jax.random.key(0))
    model = jaxcal.CalibrationWeights.init(matrix.n_records, key=init_key, **MODEL)
    objective = jaxcal.Objective.create(matrix.n_targets, loss="relative", **FIT)

    def run() -> None:
        result = jaxcal.fit(
            model, matrix, problem.targets, objective, key=fit_key, epochs=epochs, learning_rate=LEARNING_RATE
        )
        jax.block_until_ready(result)

    memory = _compiled_memory(_fit, run)  # Also the warm-up.
    seconds = best_time(run) / epochs
    device = jax.devices()[0]
    note = f"{device.device_kind}; {memory}"
    if device.platform == "cpu":
        floor = best_time(floor_products(problem, epochs)) / epochs
        note += f"; {seconds / floor:.2f}x the scipy floor timed after it"
    return seconds, note


def products(
    size: str, repeats: int, layout: str, sorted_hint: bool, platform: str = "auto", xla_flags: str = ""
) -> tuple[float, str]:
    """Seconds for ``X @ w`` plus ``X.T @ r`` with jaxcal's kernel, ``indices_are_sorted`` as
    given for ``X @ w``, and the bandwidth achieved on the ideal traffic: every nonzero's
    row, column and value read twice (24 bytes), the two vectors read and written once."""
    _environment(platform, xla_flags)
    import jax
    import jax.numpy as jnp

    import jaxcal
    from jaxcal._matrix import spmv

    problem = policyengine_shaped_problem(SIZES[size])
    matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix, layout=layout)
    w = jnp.asarray(problem.true_weights, jnp.float32)
    r = jnp.asarray(problem.targets, jnp.float32)

    @jax.jit
    def both(m: jaxcal.TargetMatrix, w: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        forward = spmv(m.rows, m.cols, m.values, w, m.n_targets, sorted_out=sorted_hint)
        return forward, spmv(m.cols, m.rows, m.values, r, m.n_records)

    def run() -> None:
        for _ in range(repeats):
            jax.block_until_ready(both(matrix, w, r))

    seconds = best_time(run) / repeats
    traffic = 24 * matrix.nnz + 8 * (matrix.n_records + matrix.n_targets)
    device = jax.devices()[0]
    achieved = traffic / seconds
    peak = PEAK_BANDWIDTH.get(device.device_kind)
    limit = f", {seconds / (traffic / peak):.1f}x the bandwidth limit" if peak else ""
    return seconds, f"{device.device_kind}; X @ w + X.T @ r only; {achieved / 1e9:,.1f} GB/s achieved{limit}"


def l0_python_epoch(size: str, epochs: int, platform: str = "auto") -> tuple[float, str]:
    """Seconds per epoch of l0-python's ``SparseCalibrationWeights.fit``, after one warm-up epoch;
    on the GPU when ``platform`` is ``gpu``, or ``auto`` and torch sees one."""
    import torch
    from l0.calibration import SparseCalibrationWeights

    warnings.filterwarnings("ignore", "Sparse invariant checks")  # l0-python's, on every fit

    cuda = platform == "gpu" or (platform == "auto" and torch.cuda.is_available())
    problem = policyengine_shaped_problem(SIZES[size])
    model = SparseCalibrationWeights(problem.matrix.shape[1], device="cuda" if cuda else "cpu", **MODEL)

    def run(n: int) -> None:
        model.fit(
            problem.matrix,
            problem.targets,
            epochs=n,
            lr=LEARNING_RATE,
            loss_type="relative",
            **FIT,
        )
        if cuda:
            torch.cuda.synchronize()

    run(1)  # Converts and caches the torch matrix.
    start = time.perf_counter()
    run(epochs)
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    return (time.perf_counter() - start) / epochs, f"torch, {where}"


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
            f"- Python {platform.python_version()}, " + ", ".join(f"{p} {_version(p)}" for p in packages),
            "",
        ]
    )


def size_section(size: str, rows: list[tuple[str, int, tuple[float, str, float]]]) -> str:
    ms = {name: seconds * 1e3 for name, _, (seconds, _, _) in rows}
    ratios = []
    if "scipy floor" in ms:
        ratios.append(f"jaxcal / scipy floor (separate processes): {ms['jaxcal'] / ms['scipy floor']:.2f}x")
    if "jaxcal (rows layout)" in ms:
        ratios.append(f"jaxcal rows layout / interleaved: {ms['jaxcal (rows layout)'] / ms['jaxcal']:.2f}x")
    if "l0-python" in ms:
        ratios.append(f"l0-python / jaxcal: {ms['l0-python'] / ms['jaxcal']:.1f}x")
    lines = [
        f"### {size}: {SIZES[size]:,} records",
        "",
        "| implementation | ms/epoch | epochs timed | peak RSS (MiB) | notes |",
        "|---|--:|--:|--:|---|",
        *(f"| {name} | {ms[name]:.1f} | {n} | {peak:,.0f} | {note} |" for name, n, (_, note, peak) in rows),
        "",
        "; ".join(ratios),
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
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu", "tpu"],
        default="auto",
        help="backend of jaxcal (and torch: gpu means cuda); auto: JAX's default",
    )
    parser.add_argument("--chunk", type=int, help="also time the chunked kernels, this many nonzeros a step")
    parser.add_argument(
        "--devices", type=int, help="also time a fit sharded over this many devices (with --device cpu: CPU devices)"
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="also time the two products alone: bandwidth, indices_are_sorted on and off",
    )
    parser.add_argument("--ftz-atomics", action="store_true", help=f"also time the jaxcal rows with {FTZ_ATOMICS}")
    parser.add_argument("--skip-floor", action="store_true", help="do not time scipy (slow at mp-30m)")
    parser.add_argument("--skip-rows-layout", action="store_true", help="do not time the rows layout")
    args = parser.parse_args()
    if args.ftz_atomics and args.device == "cpu":
        parser.error("--ftz-atomics is an NVPTX (GPU) flag")
    if min(args.epochs, args.torch_epochs) < 1:
        parser.error("--epochs and --torch-epochs must be positive")
    if not args.skip_torch and not all(importlib.util.find_spec(m) for m in ("torch", "l0")):
        parser.error("l0-python needs torch and l0-python: pip install -e '.[parity]', or pass --skip-torch")

    sections = [header()]
    print(sections[0], flush=True)
    for size in args.sizes:
        place = (args.device,)
        benches = [] if args.skip_floor else [("scipy floor", args.epochs, scipy_floor, ())]
        jaxcal_rows = [("jaxcal", ("interleaved", None, None, *place))]
        if not args.skip_rows_layout:
            jaxcal_rows.append(("jaxcal (rows layout)", ("rows", None, None, *place)))
        if args.chunk:
            jaxcal_rows.append((f"jaxcal (chunks of {args.chunk:,})", ("interleaved", args.chunk, None, *place)))
        if args.devices:
            jaxcal_rows.append((f"jaxcal ({args.devices} devices)", ("interleaved", None, args.devices, *place)))
        benches += [(name, args.epochs, jaxcal_epoch, extra) for name, extra in jaxcal_rows]
        if args.ftz_atomics:
            benches += [
                (f"{name}, ftz atomics", args.epochs, jaxcal_epoch, (*extra, FTZ_ATOMICS))
                for name, extra in jaxcal_rows
            ]
        if args.kernels:
            for layout, hint in (("interleaved", False), ("rows", True), ("rows", False)):
                name = f"products only ({layout}, indices_are_sorted={hint})"
                benches.append((name, args.epochs, products, (layout, hint, *place)))
                if args.ftz_atomics:
                    benches.append((f"{name}, ftz atomics", args.epochs, products, (layout, hint, *place, FTZ_ATOMICS)))
        if not args.skip_torch:
            benches.append(("l0-python", args.torch_epochs, l0_python_epoch, place))
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
