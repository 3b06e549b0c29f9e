"""What ``jaxcal fit`` adds to an epoch: the CLI's ms/epoch against the library's, same package, same settings.

Each size runs in its own spawned process, which builds the synthetic package
(``builders.synthetic_problem.synthetic_package``), saves it, and then, ``--repeats`` times:

- **library**: ``jaxcal.fit`` with the CLI's settings (policyengine-us-data's defaults, the CLI's
  starting weights) and chunking (10 epochs a compiled chunk), no callback. ms/epoch is the
  difference between a fit of ``--epochs`` and one of a single chunk, over the extra epochs, so
  compilation (warmed up first) and the start and end of a fit cancel.
- **CLI**: ``jaxcal.cli.main(["fit", ...])`` in this process, as the command runs it (no
  ``--log-freq``: a progress line after every chunk, to a pipe). ms/epoch is the time between
  its first and last progress lines over the epochs between them: the chunks and everything the
  CLI does after each, without loading the package, compiling or writing the outputs.

The fastest repeat of each is reported (and every repeat: a machine shared with other jobs makes
single timings swing by tens of percent). ``--help-only`` times ``jaxcal --help`` and ``jaxcal fit
--help`` (fresh interpreters, best of 5) and whether they import jax. The same script measures an
older checkout (``PYTHONPATH=/path/to/checkout``): before the layered API it calls that
checkout's ``jaxcal.fit(..., lambda_l0=...)``.

    python benchmarks/cli_overhead.py --sizes mp-300k mp-3m --epochs 50 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from builders.synthetic_problem import SIZES

CHUNK = 10
"""The CLI's epochs between progress lines without --log-freq."""
PROGRESS_LINE = re.compile(r"^epoch\s+(\d+)/\d+")


class _Timestamps(io.TextIOBase):
    """A stderr that notes when each progress line arrives (and drops the text)."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, int]] = []

    def write(self, text: str) -> int:
        match = PROGRESS_LINE.match(text)
        if match:
            self.lines.append((time.perf_counter(), int(match.group(1))))
        return len(text)


def _library_fit(package):  # noqa: ANN001, ANN202 - either checkout's types
    """``run(epochs)``: a fit as the CLI starts it, with the layered API's ``fit`` or the older one's."""
    import jax

    import jaxcal

    layered = hasattr(jaxcal, "Objective")
    initial = _io().policyengine_initial_weights(package)
    init_key, fit_key = jax.random.split(jax.random.key(42))
    model = jaxcal.CalibrationWeights.init(
        package.n_records,
        key=init_key,
        init_weights=initial,
        init_keep_prob=0.999,
        log_alpha_jitter_sd=0.01,
        beta=0.35,
        gamma=-0.1,
        zeta=1.1,
    )
    matrix, targets = package.target_matrix(), package.target_values
    settings = dict(key=fit_key, learning_rate=0.15, log_weight_jitter_sd=0.05, chunk_epochs=CHUNK)
    penalties = dict(lambda_l0=1e-8, lambda_l2=1e-12)

    def run(epochs: int) -> None:
        if layered:
            objective = jaxcal.Objective.create(package.n_targets, **penalties)
            result = jaxcal.fit(model, matrix, targets, objective, epochs=epochs, **settings)
        else:
            result = jaxcal.fit(model, matrix, targets, epochs=epochs, **penalties, **settings)
        jax.block_until_ready(result.weights)

    return run


def _io():  # noqa: ANN202 - a module
    """Where packages are read and written: ``jaxcal.io``, or ``jaxcal`` itself before the layered API."""
    import jaxcal

    return importlib.import_module("jaxcal.io") if hasattr(jaxcal, "Objective") else jaxcal


def _cli_seconds_per_epoch(package_path: str, output: str, epochs: int) -> float:
    from jaxcal.cli import main

    stderr, sys.stderr = sys.stderr, _Timestamps()
    try:
        code = main(["fit", "--package-path", package_path, "--output", output, "--epochs", str(epochs)])
        lines = sys.stderr.lines
    finally:
        sys.stderr = stderr
    assert code == 0, f"jaxcal fit exited {code}"
    (t0, e0), (t1, e1) = lines[0], lines[-1]
    return (t1 - t0) / (e1 - e0)


def measure(size: str, epochs: int, repeats: int) -> dict[str, object]:
    """ms/epoch of the library and of the CLI at ``size`` (in a fresh process)."""
    from builders.synthetic_problem import synthetic_package

    package = synthetic_package(SIZES[size])
    with tempfile.TemporaryDirectory() as directory:
        path = str(_io().save_package(package, os.path.join(directory, "package.npz")))
        library = _library_fit(package)
        library(CHUNK)  # compiles the chunk
        library_times, cli_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            library(epochs)
            middle = time.perf_counter()
            library(CHUNK)
            library_times.append(((middle - start) - (time.perf_counter() - middle)) / (epochs - CHUNK))
            cli_times.append(_cli_seconds_per_epoch(path, os.path.join(directory, "run", "w.npy"), epochs))
    return {
        "size": size,
        "nnz": package.nnz,
        "library_ms": 1e3 * min(library_times),
        "cli_ms": 1e3 * min(cli_times),
        "all_library_ms": [round(1e3 * t, 1) for t in library_times],
        "all_cli_ms": [round(1e3 * t, 1) for t in cli_times],
    }


def help_seconds() -> list[tuple[str, float, bool]]:
    """Wall-clock seconds of a fresh interpreter printing each help, and whether it imported jax."""
    rows = []
    for argv in (["--help"], ["fit", "--help"]):
        script = (
            f"import sys\nfrom jaxcal.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(str('jax' in sys.modules))"
        )
        times, imported = [], None
        for _ in range(5):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            imported = done.stderr.strip().endswith("True")
        rows.append((f"jaxcal {' '.join(argv)}", min(times), imported))
    return rows


def section(results: list[dict[str, object]], helps: list[tuple[str, float, bool]], label: str) -> str:
    lines = [
        f"### CLI overhead, {label}, {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- command: `{shlex.join(sys.orig_argv)}`"
        + (f" (PYTHONPATH={os.environ['PYTHONPATH']})" if os.environ.get("PYTHONPATH") else ""),
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "",
    ]
    if results:
        lines += [
            "| tier | nonzeros | library ms/epoch | CLI ms/epoch | CLI / library | all repeats (library; CLI) |",
            "|---|--:|--:|--:|--:|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['size']} | {r['nnz']:,} | {r['library_ms']:.1f} | {r['cli_ms']:.1f} | "
                f"{r['cli_ms'] / r['library_ms']:.2f}x | {r['all_library_ms']}; {r['all_cli_ms']} |"
            )
        lines.append("")
    if helps:
        lines += ["| command | seconds (best of 5) | imports jax |", "|---|--:|---|"]
        lines += [f"| `{name}` | {seconds:.2f} | {'yes' if jax else 'no'} |" for name, seconds, jax in helps]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["mp-300k"])
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the long fits (a multiple of 10)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="this checkout", help="what the section measures, e.g. 'before'")
    parser.add_argument("--help-only", action="store_true", help="time only the --help commands")
    parser.add_argument("--output", help="append the results as a markdown section to this file")
    args = parser.parse_args()
    if args.epochs % CHUNK or args.epochs < 3 * CHUNK:
        parser.error(f"--epochs must be a multiple of {CHUNK}, at least {3 * CHUNK}")
    helps = help_seconds()
    results = []
    if not args.help_only:
        for size in args.sizes:
            print(f"{size}...", file=sys.stderr, flush=True)
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                results.append(pool.submit(measure, size, args.epochs, args.repeats).result())
    text = section(results, helps, args.label)
    print(text)
    if args.output:
        with open(args.output, "a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
