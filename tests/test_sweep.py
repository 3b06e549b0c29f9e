"""Sweeps: each vmapped member is the plain fit with its lambda_l0; the frontier and its files."""

import jax
import numpy as np
import pandas as pd
import pytest
from _fitting import fit, sweep
from _workflow_problem import small_package

import jaxcal
import jaxcal.io
from jaxcal.runs import write_frontier
from jaxcal.workflow import holdout_split, sweep_grid

LAMBDAS = [1e-3, 3e-2, 3e-1]


@pytest.fixture(scope="module")
def package():
    return small_package()[0]


def _model(n, beta=0.35):
    return jaxcal.CalibrationWeights.init(n, key=jax.random.key(2), init_weights=100.0, init_keep_prob=0.9, beta=beta)


def test_each_member_is_the_plain_fit(package):
    matrix, targets = package.target_matrix(), package.target_values
    settings = dict(key=jax.random.key(5), epochs=30, log_weight_jitter_sd=0.05)
    result = sweep(_model(package.n_records), matrix, targets, LAMBDAS, **settings)
    assert result.weights.shape == (3, package.n_records) and result.history.total.shape == (3, 30)
    for i, lam in enumerate(LAMBDAS):
        plain = fit(_model(package.n_records), matrix, targets, lambda_l0=lam, **settings)
        np.testing.assert_allclose(result.weights[i], plain.weights, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(result.history.total[i], plain.history.total, rtol=1e-4)
        assert result.n_active[i] == plain.n_active
    kept = result.n_active
    assert kept[0] > kept[1] > kept[2]  # a stronger penalty keeps fewer records


def test_sweep_rejects_non_positive_lambdas(package):
    with pytest.raises(ValueError, match="positive"):
        sweep(
            _model(package.n_records),
            package.target_matrix(),
            package.target_values,
            [0.0, 1e-3],
            key=jax.random.key(0),
        )


def test_grid_frontier_and_files(package, tmp_path):
    split = holdout_split(package.targets, seed=0)
    frontier, results = sweep_grid(package, LAMBDAS, [0.35, 0.65], key=jax.random.key(0), split=split, epochs=20)
    assert frontier[["beta", "lambda_l0"]].values.tolist() == [[b, lam] for b in (0.35, 0.65) for lam in LAMBDAS]
    assert [r.beta for r in results] == [0.35, 0.65]
    w = np.asarray(results[1].weights[2], np.float64)
    row = frontier.iloc[5]
    assert row["records_kept"] == (w > 0).sum()
    t, X = package.target_values, package.matrix.astype(np.float64)
    for rows, column in ((split.train, "train_loss"), (split.holdout, "holdout_loss")):
        expected = np.sum(((t[rows] - X[rows] @ w) / (t[rows] + 1)) ** 2)
        assert row[column] == pytest.approx(expected, rel=1e-5)
    paths = write_frontier(frontier, tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), frontier)
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_sweep_command(package, tmp_path):
    import json

    from jaxcal.cli import main

    jaxcal.io.save_package(package, tmp_path / "p.npz")
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--package",
        str(tmp_path / "p.npz"),
        "--lambda-l0",
        *map(str, LAMBDAS),
        "--epochs",
        "20",
        "--holdout-fraction",
        "0.2",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    frontier = pd.read_csv(out / "frontier.csv")
    assert frontier["lambda_l0"].tolist() == LAMBDAS and frontier["holdout_loss"].notna().all()
    assert frontier["records_kept"].is_monotonic_decreasing
    config = json.loads((out / "unified_run_config.json").read_text())
    assert config["hyperparameters"]["beta"] == [0.35] and config["holdout"]["n_holdout_targets"] > 0
    assert main(["sweep", "--package", str(tmp_path / "p.npz"), "--lambda-l0", "0", "--output", str(out)]) == 1
