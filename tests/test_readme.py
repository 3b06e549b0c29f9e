"""The README's tour runs as written, and what it shows holds."""

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
    np.testing.assert_allclose(result.predictions, problem.matrix @ np.asarray(result.weights, np.float64), rtol=1e-4)
    errors = np.abs(np.asarray(result.predictions) - problem.targets) / problem.targets
    assert np.median(errors) < 0.05
