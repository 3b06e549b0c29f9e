"""Malformed inputs, generated: damaged checkpoints, presets files of the wrong shape, output paths
that cannot be written. ``jaxcal fit`` (run in-process) must refuse each the way it refuses any user
mistake: a non-zero exit, one line on stderr, no traceback, its inputs untouched and nothing left
in the output directory."""

import contextlib
import hashlib
import io
import json
import math
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import SMALL

import jaxcal.io
from builders.synthetic_problem import synthetic_package
from jaxcal.cli import main

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PLAIN = ("--lambda-l0", "1e-4")
HOLDOUT = ("--all-active-targets", "--holdout-fraction", "0.3", "--lambda-l0", "0", "--log-freq", "1")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A package and two checkpoints of it (a plain fit's and a held-out fit's), 2 epochs each."""
    directory = tmp_path_factory.mktemp("fuzz")
    package = jaxcal.io.save_package(synthetic_package(600, **SMALL), directory / "package.npz")
    for name, flags in (("plain", PLAIN), ("holdout", HOLDOUT)):
        argv = ["fit", "--package-path", str(package), "--output", str(directory / name / "w.npy"), *flags]
        assert main([*argv, "--epochs", "2", "--quiet"]) == 0
    return directory


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(directory):
    """What ``directory`` holds (None when it does not exist)."""
    if not directory.exists():
        return None
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


def assert_refused(argv, inputs, output_dir):
    """``jaxcal ARGV`` fails as a user mistake does (a non-zero exit, one line on stderr, no
    traceback), ``inputs`` byte for byte as they were and ``output_dir`` holding what it held."""
    before = [_digest(path) for path in inputs], _tree(output_dir)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    lines = stderr.getvalue().strip().splitlines()
    assert code != 0 and len(lines) == 1 and "error:" in lines[0], stderr.getvalue()
    assert "Traceback" not in stderr.getvalue() and "--debug" not in lines[0], lines[0]  # a foreseen mistake
    assert ([_digest(path) for path in inputs], _tree(output_dir)) == before


@contextlib.contextmanager
def scratch():
    """A fresh directory for one example (``tmp_path`` is one for all of a test's examples)."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="jaxcal-fuzz-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def _members(path):
    with np.load(path) as npz:
        return dict(npz.items())


def _write(path, members, raw=None):
    """An ``.npz`` of ``members``; ``raw`` replaces some members' ``.npy`` bytes with other bytes."""
    np.savez(path, **members)
    if raw:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: archive.read(info) for info in archive.infolist()}
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, raw.get(name.removesuffix(".npy"), data))


NOT_OBJECTS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=4), st.lists(st.integers())
).map(json.dumps)
NOT_JSON = st.text(min_size=1, max_size=12).filter(lambda text: not _is_json(text))
WRONG_DTYPES = {
    "f": ("i8", "?", "c8", "U3", [("x", "f4")]),
    "i": ("f4", "?", "c8", "U3", [("x", "i4")]),
    "u": ("i8", "f4", "?", "U3"),
}


def _is_json(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@st.composite
def damaged(draw, members, holdout):
    """A damage to a checkpoint's ``members``: ``(members, raw bytes, truncate to)``."""
    members = dict(members)
    numeric = sorted(name for name, value in members.items() if value.dtype.kind in "iuf")
    floats = sorted(name for name in numeric if members[name].dtype.kind == "f")
    texts = ["gates", "signature", "hyperparameters"] + (["holdout/log"] if holdout else [])
    kind = draw(st.sampled_from(["truncate", "garbage", "drop", "shape", "dtype", "nonfinite", "json", "count"]))
    if kind == "truncate":
        return members, None, draw(st.floats(0, 0.99))
    if kind == "garbage":
        name = draw(st.sampled_from(sorted(members)))
        return members, {name: draw(st.binary(max_size=64).filter(lambda b: not b.startswith(b"\x93NUMPY")))}, None
    if kind == "drop":
        del members[draw(st.sampled_from(sorted(members)))]
    elif kind == "shape":
        name = draw(st.sampled_from(numeric))
        value = members[name]
        shape = draw(st.lists(st.integers(1, 3), max_size=2).map(tuple).filter(lambda s: s != value.shape))
        members[name] = np.resize(value, shape) if value.size else np.zeros(shape, value.dtype)
    elif kind == "dtype":
        name = draw(st.sampled_from(numeric))
        dtype = np.dtype(draw(st.sampled_from(WRONG_DTYPES[members[name].dtype.kind])))
        members[name] = np.zeros(members[name].shape, dtype)
    elif kind == "nonfinite":
        name = draw(st.sampled_from(floats))
        value = members[name].copy()
        value.flat[draw(st.integers(0, value.size - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        members[name] = value
    elif kind == "json":
        members[draw(st.sampled_from(texts))] = np.array(draw(st.one_of(NOT_OBJECTS, NOT_JSON)))
    else:  # a count no fit writes: epochs or the format version out of range, a best epoch never evaluated
        names = ["epochs", "format_version"] + (["holdout/best_epochs"] if holdout else [])
        name = draw(st.sampled_from(names))
        bad = {"epochs": [-1], "format_version": [0, 3, -2], "holdout/best_epochs": [-1, 3, 99]}[name]
        members[name] = np.array(draw(st.sampled_from(bad)), np.int64)
    return members, None, None


@pytest.mark.parametrize("fit", ["plain", "holdout"])
@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused(workspace, fit, data):
    checkpoint = workspace / fit / "w.checkpoint.npz"
    members, raw, keep = data.draw(damaged(_members(checkpoint), holdout=fit == "holdout"))
    with scratch() as directory:
        bad = directory / "bad.npz"
        _write(bad, members, raw)
        if keep is not None:
            bad.write_bytes(bad.read_bytes()[: int(keep * bad.stat().st_size)])
        output = directory / "out"
        argv = ["fit", "--package-path", workspace / "package.npz", "--output", output / "w.npy", "--epochs", "1"]
        argv += [*(PLAIN if fit == "plain" else HOLDOUT), "--resume-from", bad]
        assert_refused(argv, [bad, workspace / "package.npz"], output)


HYPERPARAMETERS = ("epochs", "beta", "lambda_l0", "lambda_l2", "learning_rate")
BAD_VALUES = st.one_of(
    st.text(max_size=6),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
    st.sampled_from([math.nan, math.inf, -math.inf, -1, -0.5]),
)
"""No hyperparameter takes one of these (nor ``epochs`` a fraction)."""


@st.composite
def bad_presets(draw):
    """The text of a presets file whose set ``fast`` is not a set of numbers."""
    kind = draw(st.sampled_from(["top level", "set", "value", "unknown", "yaml"]))
    if kind == "yaml":
        return draw(st.sampled_from(["fast: [", "fast:\n  beta: 1\n   epochs: 2\n", "{fast: {beta: 1}", "\t- a"]))
    if kind == "top level":
        return yaml.safe_dump(draw(st.one_of(st.lists(st.just("fast"), min_size=1), st.just("fast"), st.integers())))
    if kind == "set":
        return yaml.safe_dump({"fast": draw(st.one_of(st.lists(st.integers(), min_size=1), st.text(min_size=1)))})
    if kind == "unknown":
        unknown = draw(st.text(min_size=1, max_size=6).filter(lambda key: key not in HYPERPARAMETERS))
        return yaml.safe_dump({"fast": {unknown: 1.0, "beta": 0.5}})
    name = draw(st.sampled_from(HYPERPARAMETERS))
    value = draw(st.one_of(BAD_VALUES, st.just(2.5)) if name == "epochs" else BAD_VALUES)
    return yaml.safe_dump({"fast": {"beta": 0.5, name: value}})


@FUZZ
@given(text=bad_presets())
def test_a_malformed_presets_file_is_refused(workspace, text):
    with scratch() as directory:
        presets = directory / "presets.yaml"
        presets.write_text(text)
        output = directory / "out"
        argv = ["fit", "--package-path", workspace / "package.npz", "--output", output / "w.npy"]
        argv += ["--presets-file", presets, "--hyperparameters", "fast"]  # no --epochs: it would override the set's
        assert_refused(argv, [presets, workspace / "package.npz"], output)


@st.composite
def bad_outputs(draw, root):
    """Flags naming outputs ``jaxcal fit`` cannot write (created under ``root``): an existing
    directory as the weights or the checkpoint, a path under a file, a name that is no ``.npy``,
    or the package itself as the checkpoint."""
    kind = draw(st.sampled_from(["directory", "under a file", "suffix", "checkpoint directory", "package"]))
    depth = draw(st.integers(0, 2))
    below = pathlib.Path(*draw(st.lists(st.sampled_from("abc"), min_size=depth, max_size=depth)))
    if kind == "directory":
        (root / "out" / below / "w.npy").mkdir(parents=True)
        return ["--output", root / "out" / below / "w.npy"]
    if kind == "under a file":
        (root / "out").mkdir()
        (root / "out" / "file").write_text("a file")
        return ["--output", root / "out" / "file" / below / "w.npy"]
    if kind == "suffix":
        return ["--output", root / "out" / below / f"w{draw(st.sampled_from(['', '.npz', '.txt', '.npy.tmp']))}"]
    if kind == "checkpoint directory":
        (root / "out" / below).mkdir(parents=True)
        return ["--output", root / "out" / "w.npy", "--checkpoint-output", root / "out" / below]
    return ["--output", root / "out" / "w.npy", "--checkpoint-output", root / "package.npz"]


@FUZZ
@given(data=st.data())
def test_an_output_that_cannot_be_written_is_refused(workspace, data):
    with scratch() as directory:
        package = shutil.copy(workspace / "package.npz", directory / "package.npz")
        flags = data.draw(bad_outputs(directory))
        inputs = [path for path in directory.rglob("*") if path.is_file()]
        assert_refused(["fit", "--package-path", package, "--epochs", "1", *flags], inputs, directory)
