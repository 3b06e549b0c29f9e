"""Multi-process fits (``jax.distributed``): 2 processes x 2 CPU devices on localhost against the
single-process 4-device fit, a kill of one process and a resume, and each process's share of the
package."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import jaxcal.io
from builders.synthetic_problem import synthetic_package
from jaxcal.cli import main

SMALL = dict(n_base=250, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=3)
FIT = ["--all-active-targets", "--device", "cpu", "--seed", "7"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def package_path(tmp_path_factory):
    package = synthetic_package(1003, **SMALL)  # 1,003 records: the last device's block is padded
    return jaxcal.io.save_package(package, tmp_path_factory.mktemp("package") / "package.npz")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, *, processes, devices):
    """``jaxcal fit ARGS`` as ``processes`` processes of ``devices`` CPU devices each, joined on a
    free localhost port (one plain process when ``processes`` is 1)."""
    env = os.environ | {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(devices),
    }
    command = [sys.executable, "-m", "jaxcal", "fit", *FIT, *args]
    if processes == 1:
        return [subprocess.Popen([*command, "--devices", str(devices)], env=env, stdout=subprocess.PIPE, text=True)]
    join = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(processes)]
    return [
        subprocess.Popen(
            [*command, *join, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if i else None,
            text=True,
        )
        for i in range(processes)
    ]


# What gloo (JAX's CPU collectives) prints as ranks connect, from one thread per device, so two
# ranks' lines can interleave ("[Gloo] Rank [Gloo] Rank 2 is connected ...\n3 is connected ...").
GLOO = re.compile(
    r"\[Gloo\] Rank |\d+ is connected to \d+ peer ranks\. Expected number of connected peer ranks is : \d+\n?"
)


def finish(procs):
    """Every process's stdout, once all have exited 0, without gloo's connection messages."""
    outputs = [proc.communicate(timeout=TIMEOUT)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), outputs
    return [GLOO.sub("", out) for out in outputs]


def test_two_processes_fit_as_one_process_on_four_devices(package_path, tmp_path):
    """2 processes x 2 devices give the weights of 1 process x 4 devices (the same gate draws, one
    stream per device) up to float32 summation order; the first process writes every output and
    the second prints nothing."""
    args = ["--package-path", str(package_path), "--epochs", "60", "--log-freq", "20"]
    single, multi = tmp_path / "single" / "w.npy", tmp_path / "multi" / "w.npy"
    finish(launch([*args, "--output", str(single)], processes=1, devices=4))
    printed = finish(launch([*args, "--output", str(multi)], processes=2, devices=2))
    assert "OUTPUT_PATH:" in printed[0] and printed[1] == ""
    assert sorted(p.name for p in multi.parent.iterdir()) == sorted(p.name for p in single.parent.iterdir())
    expected, weights = np.load(single), np.load(multi)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-4 * expected.max())
    one, two = (pd.read_csv(path.parent / "unified_diagnostics.csv") for path in (single, multi))
    np.testing.assert_allclose(two["estimate"], one["estimate"], rtol=1e-4)
    record, alone = (json.loads((path.parent / "unified_run_config.json").read_text()) for path in (multi, single))
    assert record["hyperparameters"]["n_processes"] == 2 and record["hyperparameters"]["devices"] == "all"
    assert record["package_signature"] == alone["package_signature"] == jaxcal.io.load_package(package_path).signature()
    for field in ("n_targets", "n_records", "weight_nonzero", "epochs_completed"):
        assert record[field] == alone[field], field
    assert record["median_error_pct"] == pytest.approx(alone["median_error_pct"], rel=1e-3)


def test_a_killed_fit_resumes_bitwise(package_path, tmp_path):
    """A fit whose second process is killed resumes from the first's checkpoint to the weights of
    the fit that was never stopped, bitwise."""
    epochs, every = 800, 100
    args = ["--package-path", str(package_path), "--log-freq", str(every)]
    whole = tmp_path / "whole" / "w.npy"
    finish(launch([*args, "--epochs", str(epochs), "--output", str(whole)], processes=2, devices=2))

    killed = tmp_path / "killed" / "w.npy"
    checkpoint = killed.with_suffix(".checkpoint.npz")
    procs = launch([*args, "--epochs", str(epochs), "--output", str(killed)], processes=2, devices=2)
    deadline = time.monotonic() + TIMEOUT
    while not (checkpoint.is_file() and jaxcal.io.load_checkpoint(checkpoint).epochs >= 3 * every):
        assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint before the fit ended"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[0].send_signal(signal.SIGKILL)  # the job is lost, as a scheduler would end it
    for proc in procs:
        proc.communicate(timeout=TIMEOUT)
    done = jaxcal.io.load_checkpoint(checkpoint).epochs
    assert 3 * every <= done < epochs and done % every == 0
    assert not killed.is_file()

    resumed = tmp_path / "resumed" / "w.npy"
    rest = ["--resume-from", str(checkpoint), "--epochs", str(epochs - done), "--output", str(resumed)]
    finish(launch([*args, *rest], processes=2, devices=2))
    np.testing.assert_array_equal(np.load(resumed), np.load(whole))
    record = json.loads((resumed.parent / "unified_run_config.json").read_text())
    assert record["epochs_total"] == epochs


def test_a_process_reads_only_its_records(package_path):
    """``load_package(records=...)`` keeps those columns' nonzeros and the whole matrix's row
    sums, counts and signature; the shares add up to the matrix and to its ``X @ w``."""
    whole = jaxcal.io.load_package(package_path)
    cut = 417
    shares = [jaxcal.io.load_package(package_path, records=r) for r in ((0, cut), (cut, whole.n_records))]
    first, second = shares
    assert first.matrix[:, cut:].nnz == 0 and second.matrix[:, :cut].nnz == 0
    assert (first.matrix + second.matrix != whole.matrix).nnz == 0
    assert first.matrix.nnz + second.matrix.nnz == whole.nnz == first.nnz == second.nnz
    for share in shares:
        assert share.signature() == whole.signature()
        np.testing.assert_allclose(share.row_sums(), whole.row_sums(), rtol=1e-12)
    keep = np.arange(0, whole.n_targets, 3)
    assert second.select_targets(keep).signature() == whole.select_targets(keep).signature()
    assert whole.select_targets(keep).signature() != whole.signature()
    w = np.random.default_rng(0).uniform(0, 200, whole.n_records)
    np.testing.assert_allclose(first.matrix @ w + second.matrix @ w, whole.estimate(w), rtol=1e-12)
    with pytest.raises(jaxcal.io.PackageError, match="holds only records 0 to 417"):
        first.target_matrix()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--distributed", "--devices", "2"], "drop --devices"),
        (["--coordinator", "localhost"], "--coordinator must be HOST:PORT"),
        (["--num-processes", "2", "--process-id", "2"], "--process-id must lie in 0 to 1"),
        (["--distributed", "--holdout-fraction", "0.2"], "cannot hold out targets"),
    ],
)
def test_multi_process_mistakes_are_one_line(package_path, tmp_path, capsys, flags, message):
    args = ["fit", "--package-path", str(package_path), "--output", str(tmp_path / "w.npy"), *flags]
    assert main(args) != 0
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
