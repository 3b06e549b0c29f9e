"""``jaxcal build`` and ``jaxcal fit`` at PolicyEngine's production shape, on this machine.

Writes ``--households`` synthetic households over the 50 states and DC
(:func:`builders.demo_microdata.generate_demo_h5`) and the real target database
(:func:`builders.real_targets.write_real_target_db`: ACS, SOI, SNAP, Medicaid, EITC at
national, state and district level), then:

1. builds with ``--clones`` clones (PolicyEngine's 430 by default), PolicyEngine once per
   state on ``--workers`` processes, each state's results written to a chunk directory;
2. kills that build (SIGKILL, its workers too) once ``--kill-after`` states are written;
3. resumes it with ``--resume-chunks`` (the written states are read back, not run);
4. fits the package for ``--epochs`` epochs on the CPU.

Each command's output is echoed with elapsed seconds and kept in the work directory; a
markdown summary goes to stdout: wall seconds, the build's stage seconds, and peak resident
memory summed over the command's processes (sampled every half second).

    .venv/bin/python benchmarks/production_build.py --households 12000 --clones 430 --workers 2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from builders.demo_microdata import generate_demo_h5
from builders.real_targets import write_real_target_db

JAXCAL = pathlib.Path(sys.executable).with_name("jaxcal")
STAGE = re.compile(r"^(\S[^:]*): ([0-9.]+) s$")


def tree_rss_gb(root: int) -> float:
    """Resident memory of ``root`` and its descendants (from /proc), in GB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total / 1e9


def run(command: list[str], log_path: pathlib.Path, stop: Callable[[], bool] = lambda: False) -> dict:
    """Run ``command`` in its own session, echoing its output with elapsed seconds into
    ``log_path``; kill the session (SIGKILL) once ``stop()`` is true. Returns the exit code,
    wall seconds, peak resident GB of its processes and its output lines."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    peak, lines, killed = [0.0], [], [False]

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_gb(process.pid))
            if not killed[0] and stop():
                killed[0] = True
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with log_path.open("w") as log:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            stamped = f"[{time.perf_counter() - started:7.1f} s] {lines[-1]}"
            print(stamped, file=sys.stderr, flush=True)
            log.write(stamped + "\n")
    process.wait()
    watcher.join()
    return {
        "code": process.returncode,
        "wall": time.perf_counter() - started,
        "peak_gb": peak[0],
        "lines": lines,
        "killed": killed[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=12000)
    parser.add_argument("--clones", type=int, default=430)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=10, help="states written before the kill (default 10)")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--workdir", type=pathlib.Path, help="default: a new temporary directory (kept)")
    args = parser.parse_args()
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="jaxcal_production_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory {workdir}", file=sys.stderr)

    started = time.perf_counter()
    dataset = generate_demo_h5(workdir / "households.h5", args.households, seed=0)
    database = write_real_target_db(workdir / "targets.db", overwrite=True)
    inputs_seconds = time.perf_counter() - started

    chunks, package = workdir / "chunks", workdir / "package.npz"
    build = [
        *(str(JAXCAL), "build", "--dataset", str(dataset), "--db-path", str(database)),
        *("--n-clones", str(args.clones), "--workers", str(args.workers), "--chunk-dir", str(chunks)),
        *("--simulation", "per-state", "--package-output", str(package)),
    ]
    killed = run(build, workdir / "build_killed.log", stop=lambda: len(list(chunks.glob("*.npz"))) >= args.kill_after)
    written = len(list(chunks.glob("*.npz")))
    resumed = run([*build, "--resume-chunks"], workdir / "build_resumed.log")
    weights = workdir / "fit" / "calibration_weights.npy"
    fit_command = [str(JAXCAL), "fit", "--package-path", str(package), "--epochs", str(args.epochs)]
    fit = run([*fit_command, "--device", "cpu", "--output", str(weights), "--log-freq", "100"], workdir / "fit.log")

    print(f"`{' '.join(sys.argv)}`, work directory `{workdir}`\n")
    print(f"- inputs (households H5 and target database): {inputs_seconds:.1f} s")
    print(
        f"- build, killed (SIGKILL) with {written} of the states written: exit {killed['code']}, "
        f"{killed['wall']:.1f} s, peak RSS {killed['peak_gb']:.2f} GB"
    )
    print(f"- build, resumed: exit {resumed['code']}, {resumed['wall']:.1f} s, peak RSS {resumed['peak_gb']:.2f} GB")
    print(f"- fit, {args.epochs} epochs: exit {fit['code']}, {fit['wall']:.1f} s, peak RSS {fit['peak_gb']:.2f} GB\n")
    print("| resumed build stage | seconds |\n|---|--:|")
    for line in resumed["lines"]:
        match = STAGE.match(line)
        if match:
            print(f"| {match[1]} | {float(match[2]):.1f} |")
    read_back = sum("read back from" in line for line in resumed["lines"])
    print(f"\nThe resumed build read back {read_back} states.\n")
    print("Build output (last lines):\n")
    for line in resumed["lines"][-12:]:
        print(f"    {line}")
    print("\nFit output (last lines):\n")
    for line in fit["lines"][-12:]:
        print(f"    {line}")


if __name__ == "__main__":
    main()
