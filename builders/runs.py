"""A build's PolicyEngine runs: what one run sets and calculates (:class:`SimulationRun`,
:func:`run_simulation`), and where runs happen (:class:`RunExecutor`): in this process or on
``workers`` processes, each run's results kept, when a chunk directory is given, as one file per
run, so that a killed build resumes without running them again.

A run (one state or one clone, :mod:`builders.simulation` makes them) is the build's unit of
cost and its chunk: its results depend only on the dataset and the run's own inputs, so a
run computed in another process, or read back from its file, is the same bits. Each file holds
a signature of what produced it (the dataset's sha256, the year, policyengine-us's version and
the run's inputs and calculations); a resumed build reuses a file only when its signature is the
one the run would have, and stops, naming the file, when it is not.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .policyengine import Simulation

Results = dict[str, np.ndarray]
_SIGNATURE = "__signature__"


@dataclasses.dataclass(frozen=True)
class Calculation:
    """One result of a run: ``variable`` at its entity (or mapped to ``map_to``) as ``dtype``
    numbers (strings for enums and text), kept as ``key``."""

    key: str
    variable: str
    map_to: str | None = None
    dtype: str = "float64"


@dataclasses.dataclass(frozen=True)
class SimulationRun:
    """One PolicyEngine run on the base dataset: from the dataset's inputs, each pass sets its
    inputs (on top of the earlier passes') and then makes its calculations."""

    name: str
    """The run's file name in a chunk directory (``state_06``, ``clone_000012``)."""
    label: str
    """How progress names it (``state 6``, ``clone 13``)."""
    passes: tuple[tuple[Mapping[str, np.ndarray], tuple[Calculation, ...]], ...]
    neutralized: str | None = None
    """A variable the run holds at 0 (:meth:`builders.policyengine.Simulation.neutralized`), or None."""

    @property
    def input_names(self) -> set[str]:
        return {name for inputs, _ in self.passes for name in inputs}


def run_simulation(
    simulation: Simulation, year: int, run: SimulationRun, dataset_inputs: Mapping[str, np.ndarray]
) -> Results:
    """``run``'s results on ``simulation`` (its neutralized copy if the run asks for one),
    starting from ``dataset_inputs`` (the dataset's values of every input a run sets), so that
    no earlier run's inputs leak into it."""
    if run.neutralized is not None:
        simulation = simulation.neutralized(run.neutralized, year)
    restore_inputs(simulation, year, dataset_inputs)
    results = {}
    for inputs, calculations in run.passes:
        for name, values in inputs.items():
            simulation.set_input(name, year, values)
        simulation.drop_computed()
        for c in calculations:
            values = simulation.calculate(c.variable, year, map_to=c.map_to)
            results[c.key] = values.astype(str) if values.dtype.kind in "OUS" else values.astype(c.dtype)
    return results


def restore_inputs(simulation: Simulation, year: int, dataset_inputs: Mapping[str, np.ndarray]) -> None:
    """Set the dataset's own values back and forget what was computed from others."""
    for name, values in dataset_inputs.items():
        simulation.set_input(name, year, values)
    simulation.drop_computed()


class RunExecutor:
    """Runs a build's simulation runs on ``workers`` processes: this one, and ``workers - 1``
    spawned ones that each load ``dataset`` once. With ``chunk_dir``, each run's results are
    written there (by the process that ran it) as it ends.

    Without ``resume`` a ``chunk_dir`` holding runs is refused (nothing is overwritten); with it,
    the runs found there are read back instead of run. Raises ``ValueError`` naming the problem.
    ``load`` makes a worker's simulation from the dataset's path (default
    :func:`builders.policyengine.load_simulation`; a module-level function, as a spawned
    process must import it). Used as a context manager, it starts its processes on entry (so that they load the model
    while the build does its own first stages) and lets them go on exit.
    """

    def __init__(
        self,
        dataset: str | os.PathLike | None = None,
        *,
        chunk_dir: str | os.PathLike | None = None,
        resume: bool = False,
        workers: int = 1,
        load: Callable[[str], Simulation] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if (chunk_dir is not None or workers > 1) and dataset is None:
            raise ValueError("a chunk directory or worker processes need the dataset's path")
        if resume and chunk_dir is None:
            raise ValueError("resuming needs the chunk directory to resume from")
        self.dataset = None if dataset is None else pathlib.Path(dataset)
        self.chunk_dir = None if chunk_dir is None else pathlib.Path(chunk_dir)
        self.resume, self.workers = resume, workers
        self.load = load
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._dataset_sha256: str | None = None  # hashed once for every call's run signatures
        if self.chunk_dir is not None:
            if self.chunk_dir.exists() and not self.chunk_dir.is_dir():
                raise ValueError(f"the chunk directory {self.chunk_dir} is a file")
            if not resume and self.chunk_dir.is_dir() and any(self.chunk_dir.glob("*.npz")):
                raise ValueError(
                    f"the chunk directory {self.chunk_dir} holds the runs of an earlier build: "
                    "resume from them (--resume-chunks) or choose an empty directory"
                )

    def __enter__(self) -> RunExecutor:
        if self.workers > 1 and self._pool is None:
            context = multiprocessing.get_context("spawn")  # a fork would copy the model's and JAX's threads
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers - 1, mp_context=context, initializer=_start_worker, initargs=(self.load, str(self.dataset))
            )
            for _ in range(self.workers - 1):  # a pool spawns a process per task it cannot hand to an idle one
                self._pool.submit(int)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            # Idle workers take seconds to tear PolicyEngine down; the build need not wait for them.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __call__(
        self,
        simulation: Simulation,
        year: int,
        runs: Sequence[SimulationRun],
        log: Callable[[str], None] = lambda message: None,
    ) -> list[Results]:
        """The results of ``runs``, in their order; ``simulation``'s inputs are as they were after."""
        names = sorted({name for run in runs for name in run.input_names})
        dataset_inputs = {name: simulation.calculate(name, year) for name in names}
        signatures = self._signatures(year, runs, dataset_inputs)
        paths = [None if self.chunk_dir is None else self.chunk_dir / f"{run.name}.npz" for run in runs]
        results: dict[int, Results] = {}
        for i, path in enumerate(paths):
            if self.resume and path is not None and path.is_file():
                results[i] = _read_chunk(path, signatures[i])
                log(f"  {runs[i].label} ({len(results)}/{len(runs)}): read back from {path}")
        pending = collections.deque(i for i in range(len(runs)) if i not in results)

        def finished(i: int, run_results: Results, seconds: float) -> None:
            results[i] = run_results
            log(f"  {runs[i].label} ({len(results)}/{len(runs)}): {seconds:.1f} s")

        started_here = self._pool is None  # called outside a with block: the workers are this call's
        try:
            self.__enter__()
            self._run_pending(simulation, year, runs, pending, dataset_inputs, paths, signatures, finished, log)
        except concurrent.futures.process.BrokenProcessPool:
            where = f"; the runs that ended are in {self.chunk_dir}" if self.chunk_dir is not None else ""
            raise RuntimeError(
                "a build worker process died (out of memory? or, from a script, is its code "
                f"under if __name__ == '__main__':?){where}"
            ) from None
        finally:
            if started_here:
                self.__exit__()
            restore_inputs(simulation, year, dataset_inputs)
        return [results[i] for i in range(len(runs))]

    def _run_pending(self, simulation, year, runs, pending, dataset_inputs, paths, signatures, finished, log):
        """Run the ``pending`` runs here and on the workers, two queued per worker so that none
        waits while this process runs one; ``finished`` takes each run's results as it ends."""
        names = sorted(dataset_inputs)
        futures: dict[concurrent.futures.Future, int] = {}

        def hand_out() -> None:
            while self._pool is not None and pending and len(futures) < 2 * (self.workers - 1):
                i = pending.popleft()
                futures[self._pool.submit(_run_on_worker, runs[i], year, names, paths[i], signatures[i])] = i

        hand_out()
        if futures:
            log(f"  {len(pending) + len(futures)} runs on {self.workers} processes")
        while pending or futures:
            if pending:
                i = pending.popleft()
                finished(i, *_run_and_keep(simulation, year, runs[i], dataset_inputs, paths[i], signatures[i]))
                done = [future for future in futures if future.done()]
            else:
                done = concurrent.futures.wait(futures, return_when="FIRST_COMPLETED").done
            for future in done:
                finished(futures.pop(future), *future.result())
            hand_out()

    def _signatures(self, year: int, runs: Sequence[SimulationRun], dataset_inputs: Mapping) -> list[str]:
        if self.chunk_dir is None:
            return [""] * len(runs)
        from jaxcal.io import sha256_file

        from .policyengine import package_version

        assert self.dataset is not None
        if self._dataset_sha256 is None:
            self._dataset_sha256 = sha256_file(self.dataset)
        common = f"{self._dataset_sha256}|{year}|policyengine-us {package_version()}|{sorted(dataset_inputs)}"
        return [_signature(common, run) for run in runs]


def _run_and_keep(
    simulation: Simulation,
    year: int,
    run: SimulationRun,
    dataset_inputs: Mapping[str, np.ndarray],
    path: pathlib.Path | None,
    signature: str,
) -> tuple[Results, float]:
    """Run ``run``, write its results to ``path`` (when there is one); the results and seconds."""
    started = time.perf_counter()
    results = run_simulation(simulation, year, run, dataset_inputs)
    if path is not None:
        _write_chunk(path, results, signature)
    return results, time.perf_counter() - started


def _signature(common: str, run: SimulationRun) -> str:
    """sha256 of what a run's results follow from: ``common`` (dataset, year, model), the variable
    it neutralizes and the run's inputs (names, dtypes, shapes, bytes) and calculations, pass by pass."""
    from jaxcal.io import sha256_arrays

    held = "" if run.neutralized is None else f"|without {run.neutralized}"
    digest = hashlib.sha256(f"{common}|{run.name}{held}".encode())
    for inputs, calculations in run.passes:
        for name in sorted(inputs):
            digest.update(f"|{name}:{sha256_arrays(inputs[name])}".encode())
        digest.update(repr(calculations).encode())
    return digest.hexdigest()


def _write_chunk(path: pathlib.Path, results: Results, signature: str) -> None:
    from jaxcal.io import atomic_write

    arrays: dict[str, Any] = {**results, _SIGNATURE: np.array(signature)}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_chunk(path: pathlib.Path, signature: str) -> Results:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise ValueError(f"cannot read the build chunk {path} ({error}); delete it to run it again") from None
    if str(arrays.pop(_SIGNATURE, "")) != signature:
        raise ValueError(
            f"the build chunk {path} was made from other inputs (dataset, year, variables, geography, "
            "draws or policyengine-us version): choose another chunk directory, or delete it to run it again"
        )
    return arrays


_worker: dict = {}
"""A worker process's own simulation (``simulation``, set by :func:`_start_worker`: a process-pool
initializer has no other way to hand its tasks state) and the dataset's values of the inputs
runs set, by year and names."""


def _start_worker(load: Callable[[str], Simulation] | None, dataset: str) -> None:
    if load is None:
        from .policyengine import load_simulation as load
    _worker["simulation"] = load(dataset)


def _run_on_worker(
    run: SimulationRun, year: int, names: Sequence[str], path: pathlib.Path | None, signature: str
) -> tuple[Results, float]:
    simulation = _worker["simulation"]
    key = (year, tuple(names))
    if key not in _worker:
        _worker[key] = {name: simulation.calculate(name, year) for name in names}
    return _run_and_keep(simulation, year, run, _worker[key], path, signature)
