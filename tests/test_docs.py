"""docs/guide.md stays true: its examples run, in order, as written.

Every ```bash block of the guide is run in one bash script (``set -euo pipefail``, so any
failing command fails the test) in a temporary directory, with the venv's ``bin`` first
on ``PATH`` and ``DEMO_DIR`` (the guide's documented variable) pointing at a demo
directory shared with the quickstart notebook's test when both run in one worker (the
demo build is cached by its settings). Every ```python block then runs in one namespace.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

GUIDE = pathlib.Path(__file__).parents[1] / "docs" / "guide.md"
README = pathlib.Path(__file__).parents[1] / "README.md"

pytestmark = pytest.mark.xdist_group("demo_package")  # the quickstart test's demo build, when in one worker


NOT_RUN = "# (not run by the tests"
"""A bash block starting with this comment is not run here (too slow, or another test runs it); its
``jaxcal`` lines are parsed instead."""


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The ``jaxcal`` command lines of a bash block, continuation lines joined, as argv."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"\w+=\S*", words[0]):  # environment assignments before the command
            words = words[1:]
        if words[:1] == ["jaxcal"]:
            found.append([word for word in words[1:] if word != "&"])
    return found


def shared_demo_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.getbasetemp() / "shared-demo"


def test_guide_documents_every_command():
    """Each `jaxcal` command has a tested example (the parser's list, so a new command needs one)."""
    from jaxcal.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    examples = "\n".join(blocks("bash"))
    for command in subparsers.choices:
        assert re.search(rf"^\s*(\S+=\S+\s+\\?\s*)*jaxcal {command}\b", examples, flags=re.MULTILINE), command
    for flag in ("--demo", "--resume-from", "--holdout-fraction", "--devices"):
        assert flag in examples, flag
    assert "docs/guide.md" in README.read_text()


def test_guide_bash_examples_run(tmp_path, tmp_path_factory):
    script = ["set -euo pipefail"]
    for i, block in enumerate(blocks("bash"), start=1):
        if block.startswith(NOT_RUN):
            continue
        script += [f'echo "### example {i} $(date +%s)" >&2', block]
    (tmp_path / "examples.sh").write_text("\n".join(script))
    env = dict(os.environ)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DEMO_DIR"] = str(shared_demo_dir(tmp_path_factory))
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        ["bash", str(tmp_path / "examples.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    failed = [line for line in result.stderr.splitlines() if line.startswith("### example")][-1:]
    assert result.returncode == 0, f"{failed} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    # What the examples claim to write is there.
    for path in (
        "runs/fit/calibration_weights.npy",
        "runs/fit/unified_run_config.json",
        "runs/holdout/holdout_log.csv",
        "runs/sweep/frontier.csv",
        "runs/tier/calibration_weights.npy",
        "runs/tier/artifact_gates.json",
        "runs/calibrated.h5",
        "runs/new_hampshire.h5",
        "converted.npz",
    ):
        assert (tmp_path / path).is_file(), path
    assert "ok" in result.stdout


def test_guide_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks("python"):
        exec(compile(block, str(GUIDE), "exec"), namespace)
    assert namespace["result"].n_active > 0
    assert namespace["tier"].tier.comparison["child"]["records_kept"] == 500


def test_guide_examples_not_run_have_valid_flags():
    """The examples too slow to run parse with the command's own argument parser."""
    from jaxcal.cli import build_parser

    skipped = [b for b in blocks("bash") if b.startswith(NOT_RUN)]
    assert skipped and all(commands(b) for b in skipped)
    for block in skipped:
        for argv in commands(block):
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as error:
                raise AssertionError(f"jaxcal {' '.join(argv)}: rejected by its parser") from error
            assert callable(args.run)
