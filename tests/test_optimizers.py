"""optimizer_named: PE's Adam exactly, and optimizers that settle at scipy's optimum where it does not."""

import jax
import numpy as np
import pytest
from _fitting import fit
from scipy import sparse
from scipy.optimize import lsq_linear

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem

EPOCHS = 800
CONVERGING = [name for name in jaxcal.OPTIMIZER_NAMES if name != "pe-adam"]


@pytest.fixture(scope="module")
def problem():
    """600 records, 84 targets and 20 sums of 4 of them 5% off their parts: under-determined
    and inconsistent, so that the optimum is positive (and sparse: most weights 0)."""
    base = policyengine_shaped_problem(
        600, n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5
    )
    rng = np.random.default_rng(0)
    picks = rng.integers(0, base.matrix.shape[0], (20, 4))
    sums = sparse.csr_array((np.ones(80), (np.repeat(np.arange(20), 4), picks.ravel())), shape=(20, 84))
    matrix = sparse.vstack([base.matrix, sums @ base.matrix]).tocsr().astype(np.float32)
    totals = (sums @ base.targets.astype(np.float64)) * (1 + 0.05 * rng.standard_normal(20))
    targets = np.concatenate([base.targets, totals]).astype(np.float32)
    return matrix, targets


@pytest.fixture(scope="module")
def optimum(problem):
    """scipy's optimum of the relative loss, weights >= 0: bounded least squares on the rows scaled by 1/(t+1)."""
    x, t = problem[0].astype(np.float64), problem[1].astype(np.float64)
    scale = 1 / (t + 1)
    solution = lsq_linear((sparse.diags(scale) @ x).toarray(), scale * t, bounds=(0, np.inf), method="bvls")
    assert solution.status > 0
    return float(np.sum((scale * (t - x @ solution.x)) ** 2))


def _objective(problem, weights):
    x, t = problem[0].astype(np.float64), problem[1].astype(np.float64)
    return float(np.sum(((t - x @ np.asarray(weights, np.float64)) / (t + 1)) ** 2))


def _fit(problem, optimizer, epochs=EPOCHS, **settings):
    matrix, targets = problem
    model = jaxcal.CalibrationWeights.init(matrix.shape[1], key=jax.random.key(0), init_weights=100.0, use_gates=False)
    return fit(
        model,
        jaxcal.TargetMatrix.from_scipy(matrix),
        targets,
        key=jax.random.key(1),
        epochs=epochs,
        lambda_l0=0.0,
        lambda_l2=0.0,
        log_weight_jitter_sd=0.05,
        optimizer=optimizer,
        **settings,
    )


@pytest.mark.parametrize("name", CONVERGING)
def test_settles_at_scipys_optimum_where_pe_adam_does_not(problem, optimum, name):
    """Over the second half of the fit PE's Adam leaves the 1% band (to over 1.1 times the optimum:
    how far is chaotic, 1.9 to over 2 times on the machines it ran on, as the CPU's rounding goes);
    the converging optimizer stays within 0.01%, ends within 1e-5, and its loss rises by no
    more than 1e-4 of the optimum from one epoch to the next once past the first 100 epochs
    (the first steps, PE's own, overshoot)."""
    pe = _fit(problem, jaxcal.optimizer_named("pe-adam"))
    ours = _fit(problem, jaxcal.optimizer_named(name, epochs=EPOCHS))
    tail = slice(EPOCHS // 2, None)
    assert np.max(np.asarray(pe.history.total)[tail]) > 1.1 * optimum
    assert np.max(np.asarray(ours.history.total)[tail]) < 1.0001 * optimum
    assert _objective(problem, ours.weights) == pytest.approx(optimum, rel=1e-5)
    assert np.max(np.diff(np.asarray(ours.history.total, np.float64)[100:])) < 1e-4 * optimum


def test_pe_adam_is_the_default_fit(problem):
    default = _fit(problem, None, epochs=50)
    named = _fit(problem, jaxcal.optimizer_named("pe-adam"), epochs=50)
    np.testing.assert_array_equal(named.weights, default.weights)


@pytest.mark.parametrize("name", jaxcal.OPTIMIZER_NAMES)
def test_new_settings_reuse_the_compiled_program(problem, name):
    """The rate and the horizon are optimizer state: other values compile nothing new."""
    from jaxcal._fit import _run_chunk

    first = _fit(problem, jaxcal.optimizer_named(name, learning_rate=0.15, epochs=100), epochs=20)
    compiled = _run_chunk._cached._cache_size()
    other = _fit(problem, jaxcal.optimizer_named(name, learning_rate=0.05, epochs=30), epochs=20)
    again = _fit(problem, jaxcal.optimizer_named(name, epochs=100), epochs=20, learning_rate=0.05)
    assert _run_chunk._cached._cache_size() == compiled
    assert not np.array_equal(first.weights, other.weights)
    assert float(again.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.05)


def test_resuming_keeps_the_schedule(problem):
    optimizer = jaxcal.optimizer_named("adam-cosine", epochs=60)
    straight = _fit(problem, optimizer, epochs=60)
    first = _fit(problem, optimizer, epochs=25)
    rest = fit(
        first.model,
        jaxcal.TargetMatrix.from_scipy(problem[0]),
        problem[1],
        key=jax.random.key(1),
        epochs=35,
        lambda_l0=0.0,
        lambda_l2=0.0,
        optimizer=optimizer,
        opt_state=first.opt_state,
        start_epoch=first.epochs,
    )
    np.testing.assert_array_equal(rest.weights, straight.weights)


@pytest.mark.parametrize(
    "name, settings, match",
    [
        ("sgd", {}, r"unknown optimizer 'sgd': choose one of pe-adam, adam-cosine"),
        ("adam-cosine", {}, r"adam-cosine decays its rate over the fit's epochs: pass epochs >= 1, got None"),
        ("adam-cosine", {"epochs": 0}, r"pass epochs >= 1, got 0"),
        ("pe-adam", {"learning_rate": -1.0}, r"learning_rate must be positive, got -1.0"),
    ],
)
def test_rejects(name, settings, match):
    with pytest.raises(ValueError, match=match):
        jaxcal.optimizer_named(name, **settings)
