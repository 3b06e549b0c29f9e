"""The README's tour runs as written, and what it shows holds."""

import json
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_readme_tour_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    result, problem = namespace["result"], namespace["problem"]
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == ["20", "40", "60", "80", "100"]
    losses = [float(line.split()[1]) for line in printed if line]
    # The tour's optimizer settles: it ends on its lowest loss (which its random gates make noisy).
    assert losses[-1] == min(losses) and losses[-1] < losses[-2], losses
    np.testing.assert_allclose(result.predictions, problem.matrix @ np.asarray(result.weights, np.float64), rtol=1e-4)
    errors = np.abs(np.asarray(result.predictions) - problem.targets) / problem.targets
    assert np.median(errors) < 0.05


def readme_bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_commands_parse():
    """Every `jaxcal` line of the README parses with the command's own parser (flags that exist)."""
    import shlex

    from jaxcal.cli import build_parser

    lines = [
        line
        for block in readme_bash_blocks()
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("jaxcal ")
    ]
    assert len(lines) >= 10
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        try:
            assert callable(build_parser().parse_args(argv).run)
        except SystemExit as error:
            raise AssertionError(f"{line}: rejected by its parser") from error


def test_readme_policyengine_workflow_runs_as_pasted(tmp_path):
    """The README's PolicyEngine workflow, pasted as it is into a shell in a directory that holds a
    PolicyEngine calibration_package.pkl (here a synthetic one) and the repository's configs/."""
    import os
    import pickle
    import shutil
    import subprocess
    import sys

    from builders.synthetic_problem import synthetic_package

    small = dict(n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5)
    package = synthetic_package(2000, **small)
    raw = {
        "X_sparse": package.matrix,
        "targets_df": package.targets,
        "target_names": list(package.target_names),
        "metadata": {"n_clones": 1},
        "cd_geoid": package.geography["cd_geoid"],
    }
    (tmp_path / "calibration_package.pkl").write_bytes(pickle.dumps(raw))
    shutil.copytree(README.parent / "configs", tmp_path / "configs")
    block = next(b for b in readme_bash_blocks() if "jaxcal convert calibration_package.pkl" in b)
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "storage/calibration/unified_run_config.json").read_text())
    assert record["epochs_total"] == 1500 and record["resume_from"] == "storage/calibration/calibration_weights.npy"
    assert "=== Target diagnosis ===" in result.stdout
