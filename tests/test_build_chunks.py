"""A chunked build on two worker processes (each PolicyEngine run's results in a file as it
ends), killed with SIGKILL and resumed, is the plain build's package bit for bit; and the
build's flags for it refuse what cannot work, in one line. (The executor's hand-out over
workers is also checked on the fake model, cheaply, in tests/test_builders_simulation.py.)

Marked with the ``policyengine`` xdist group, like every test importing policyengine_us.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from builders.demo_microdata import generate_households, write_h5
from builders.real_targets import district_populations
from builders.target_db import TargetDatabaseWriter
from builders.unified_matrix import build_calibration_package
from jaxcal.cli import main

pytestmark = pytest.mark.xdist_group("policyengine")
YEAR = 2024
STATES = (6, 36, 48)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chunks")
    dataset = write_h5(generate_households(24, seed=3, states=list(STATES)), directory / "base.h5", YEAR)
    database = directory / "policy_data.db"
    with TargetDatabaseWriter(database) as db:
        db.add_target("person_count", YEAR, 3.4e8, constraints=[("age", "<", 18)])
        db.add_target("snap", YEAR, 1e9)  # drawn take-up: each state runs twice, as it is and all eligible
        for fips in STATES:
            db.add_target("snap", YEAR, 1e8, constraints=[("state_fips", "==", str(fips))])
        db.add_target("household_count", YEAR, 1e7, constraints=[("snap", ">", "0")])
    places = district_populations()
    places = places.loc[np.isin(places["cd_geoid"] // 100, STATES)]
    places_csv = directory / "places.csv"
    places.to_csv(places_csv, index=False)
    return directory, dataset, database, places, places_csv


def _build(inputs, **options):
    _, dataset, database, places, _ = inputs
    package, _ = build_calibration_package(
        dataset, database, n_clones=8, seed=5, places=places, simulation="per_state", **options
    )
    return package


def test_a_killed_chunked_build_on_two_workers_resumes_as_the_plain_build(inputs):
    directory, dataset, database, _, places_csv = inputs
    chunks = directory / "killed"
    command = [
        *(sys.executable, "-m", "jaxcal", "build", "--dataset", str(dataset), "--db-path", str(database)),
        *("--n-clones", "8", "--seed", "5", "--geography", str(places_csv), "--simulation", "per-state"),
        *("--workers", "2", "--chunk-dir", str(chunks), "--package-output", str(directory / "killed.npz")),
    ]
    # Its own session, so that the kill takes the build's workers with it, as a scheduler's would.
    build = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not list(chunks.glob("*.npz")) and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(build.pid, signal.SIGKILL)
    _, err = build.communicate()
    assert "3 runs on 2 processes" in err, err
    assert build.returncode == -signal.SIGKILL, err
    kept = sorted(path.name for path in chunks.glob("*.npz"))
    assert 1 <= len(kept) < len(STATES) and not (directory / "killed.npz").exists(), kept

    log = []
    resumed = _build(inputs, chunk_dir=chunks, resume_chunks=True, log=log.append)
    assert sum("read back from" in line for line in log) == len(kept), log
    assert sorted(path.name for path in chunks.glob("*.npz")) == [f"state_{s:02d}.npz" for s in STATES]

    plain = _build(inputs)
    assert resumed.metadata["simulation"] == plain.metadata["simulation"] == "per_state"
    assert plain.nnz > 100
    for name in ("data", "indices", "indptr"):
        a, b = getattr(resumed.matrix, name), getattr(plain.matrix, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert resumed.targets.equals(plain.targets)
    assert list(resumed.target_names) == list(plain.target_names)
    assert resumed.initial_weights.tobytes() == plain.initial_weights.tobytes()
    assert resumed.geography.keys() == plain.geography.keys()
    for key, column in plain.geography.items():
        np.testing.assert_array_equal(resumed.geography[key], column)


@pytest.mark.parametrize(
    ("flags", "message", "code"),
    [
        (["--workers", "0"], "--workers must be at least 1", 2),
        (["--resume-chunks"], "--resume-chunks needs --chunk-dir", 2),
        (["--chunk-dir", "{places_csv}"], "the chunk directory .* is a file", 1),
        (["--domain-variables", "tanf, nosuch"], "no active target has a domain_variable among tanf, nosuch$", 1),
        (["--county-level"], "--county-level needs --geography: a CSV of blocks", 2),
        (
            ["--county-level", "--geography", "{places_csv}"],
            "needs a geography of blocks: the places have no block_geoid",
            1,
        ),
    ],
)
def test_build_flags_refuse_in_one_line(inputs, flags, message, code, capsys):
    directory, dataset, database, _, places_csv = inputs
    flags = [flag.format(places_csv=places_csv) for flag in flags]
    output = directory / "refused.npz"
    args = ["build", "--dataset", str(dataset), "--db-path", str(database), "--package-output", str(output)]
    assert main([*args, *flags]) == code
    lines = capsys.readouterr().err.strip().splitlines()  # a refusal after the build began follows its progress
    error = [line for line in lines if "error" in line or "Traceback" in line]
    assert len(error) == 1 and error[0] == lines[-1] and error[0].startswith("jaxcal build: error:"), lines
    assert re.search(message, error[0]), error
    assert not output.exists()
