"""fit(): the objective against a float64 numpy reference, determinism, resuming, chunks, errors."""

import jax
import numpy as np
import optax
import pytest
from _fitting import fit

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem


@pytest.fixture(scope="module")
def problem():
    return policyengine_shaped_problem(
        600, n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5
    )


@pytest.fixture(scope="module")
def matrix(problem):
    return jaxcal.TargetMatrix.from_scipy(problem.matrix)


def _model(n, **kwargs):
    settings = dict(init_weights=100.0, init_keep_prob=0.9, beta=0.35) | kwargs
    return jaxcal.CalibrationWeights.init(n, key=jax.random.key(42), **settings)


def _fit(model, matrix, targets, **kwargs):
    settings = dict(key=jax.random.key(0), epochs=40, lambda_l0=1e-3, log_weight_jitter_sd=0.05) | kwargs
    return fit(model, matrix, targets, **settings)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_first_epoch_objective_matches_numpy(problem, matrix):
    """history[0] is the objective at the starting parameters, computed here independently."""
    n = matrix.n_records
    model = _model(n)
    uniforms = np.random.default_rng(0).uniform(size=(3, n)).astype(np.float32)
    groups = problem.target_groups % 3
    result = _fit(
        model,
        matrix,
        problem.targets,
        epochs=3,
        uniforms=uniforms,
        lambda_l2=1e-6,
        log_weight_jitter_sd=0.0,
        target_groups=groups,
        group_multipliers={1: 2.0},
    )

    log_weight = np.asarray(model.log_weight, np.float64)
    log_alpha = np.clip(np.asarray(model.log_alpha, np.float64), -20, 20)
    u = np.clip(uniforms[0].astype(np.float64), 1e-6, 1 - 1e-6)
    gates = np.clip(_sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / 0.35) * 1.2 - 0.1, 0, 1)
    predictions = problem.matrix @ (np.exp(log_weight) * gates)
    t = problem.targets.astype(np.float64)
    g = 1 / np.bincount(groups)[groups] * np.where(groups == 1, 2.0, 1.0)
    data = np.sum(g * ((t - predictions) / (t + 1)) ** 2)
    l0 = np.sum(_sigmoid(log_alpha - 0.35 * np.log(0.1 / 1.1)))
    l2 = np.sum(np.exp(log_weight) ** 2)

    history = result.history
    np.testing.assert_allclose(history.data[0], data, rtol=1e-5)
    np.testing.assert_allclose(history.l0[0], l0, rtol=1e-5)
    np.testing.assert_allclose(history.l2[0], l2, rtol=1e-5)
    np.testing.assert_allclose(history.total[0], data + 1e-3 * l0 + 1e-6 * l2, rtol=1e-5)
    assert history.n_active[0] == np.sum(np.clip(_sigmoid(log_alpha / 0.35) * 1.2 - 0.1, 0, 1) > 0)


def test_sgd_step_is_minus_learning_rate_times_the_numpy_gradient(problem, matrix):
    """Through a plain optimizer, one epoch moves log_weight by -lr * d(mse)/d(log_weight)."""
    model = _model(matrix.n_records, use_gates=False)
    result = _fit(
        model,
        matrix,
        problem.targets,
        epochs=1,
        lambda_l0=0.0,
        lambda_l2=0.0,
        loss="mse",
        optimizer=optax.sgd(1e-14),
        log_weight_jitter_sd=0.0,
    )
    w = np.exp(np.asarray(model.log_weight, np.float64))
    residual = problem.targets - problem.matrix @ w
    gradient = -2 * w * (problem.matrix.T @ residual)
    step = np.asarray(result.model.log_weight, np.float64) - np.asarray(model.log_weight, np.float64)
    moved = np.abs(gradient) * 1e-14 > 1e-5  # steps below float32 resolution of log_weight are rounded away
    assert moved.sum() > 100
    np.testing.assert_allclose(step[moved], -1e-14 * gradient[moved], rtol=2e-2)


def test_results_are_consistent(problem, matrix):
    result = _fit(_model(matrix.n_records), matrix, problem.targets)
    weights = np.asarray(result.weights)
    np.testing.assert_allclose(result.predictions, problem.matrix @ weights.astype(np.float64), rtol=1e-5)
    expected = np.exp(np.asarray(result.model.log_weight)) * np.asarray(result.model.deterministic_gates())
    np.testing.assert_allclose(weights, expected, rtol=1e-6)  # numpy's exp vs XLA's: an ulp
    assert result.n_active == np.sum(weights > 0) and result.epochs == 40
    assert all(getattr(result.history, name).shape == (40,) for name in ("data", "l0", "l2", "total", "n_active"))
    # The fit made progress.
    assert result.history.data[-1] < 0.5 * result.history.data[0]


def test_same_key_same_weights_bitwise_and_other_key_differs(problem, matrix):
    model = _model(matrix.n_records)
    first = _fit(model, matrix, problem.targets)
    again = _fit(model, matrix, problem.targets)
    other = _fit(model, matrix, problem.targets, key=jax.random.key(1))
    np.testing.assert_array_equal(first.weights, again.weights)
    assert not np.array_equal(first.weights, other.weights)
    # The caller's model was not donated away.
    assert np.isfinite(np.asarray(model.log_weight)).all()


def test_resuming_equals_the_fit_that_never_stopped(problem, matrix):
    model = _model(matrix.n_records)
    straight = _fit(model, matrix, problem.targets, epochs=40)
    first = _fit(model, matrix, problem.targets, epochs=25)
    rest = _fit(first.model, matrix, problem.targets, epochs=15, opt_state=first.opt_state, start_epoch=first.epochs)
    assert rest.epochs == 40
    np.testing.assert_array_equal(rest.weights, straight.weights)
    np.testing.assert_array_equal(np.concatenate([first.history.total, rest.history.total]), straight.history.total)


def test_chunks_and_callback(problem, matrix):
    model = _model(matrix.n_records)
    seen = []

    def callback(result):
        seen.append((result.epochs, result.history.total.shape[0], result.n_active))

    chunked = _fit(model, matrix, problem.targets, epochs=25, chunk_epochs=10, callback=callback)
    whole = _fit(model, matrix, problem.targets, epochs=25)
    assert [s[:2] for s in seen] == [(10, 10), (20, 20), (25, 25)]
    assert seen[-1][2] == chunked.n_active
    np.testing.assert_array_equal(chunked.weights, whole.weights)


def test_callback_can_stop_the_fit(problem, matrix):
    result = _fit(
        _model(matrix.n_records), matrix, problem.targets, epochs=30, chunk_epochs=5, callback=lambda r: r.epochs >= 10
    )
    assert result.epochs == 10 and result.history.total.shape == (10,)


def test_lambda_l0_zero_switches_the_gates_off(problem, matrix):
    model = _model(matrix.n_records)
    result = _fit(model, matrix, problem.targets, lambda_l0=0.0)
    assert not result.model.use_gates
    np.testing.assert_array_equal(result.history.l0, 0.0)
    np.testing.assert_array_equal(result.model.log_alpha, model.log_alpha)  # gates untouched
    np.testing.assert_allclose(result.weights, np.exp(np.asarray(result.model.log_weight)), rtol=1e-6)
    assert result.n_active == matrix.n_records


def test_zero_epochs_returns_the_start(problem, matrix):
    model = _model(matrix.n_records)
    result = _fit(model, matrix, problem.targets, epochs=0, log_weight_jitter_sd=0.0)
    np.testing.assert_allclose(result.weights, model.deterministic_weights(), rtol=1e-6)
    assert result.epochs == 0 and result.history.total.shape == (0,)


def test_torch_adam_tracks_optax_adam(problem, matrix):
    """The same algorithm: only the bias correction's rounding differs (see torch_adam)."""
    model = _model(matrix.n_records)
    ours = _fit(model, matrix, problem.targets, epochs=10, lambda_l0=0.0)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes a Python float with an int32 count
        theirs = _fit(model, matrix, problem.targets, epochs=10, lambda_l0=0.0, optimizer=optax.adam(0.15))
    np.testing.assert_allclose(ours.model.log_weight, theirs.model.log_weight, rtol=1e-5)
    assert not np.array_equal(ours.model.log_weight, theirs.model.log_weight)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(targets=np.ones(3)), r"targets must have shape"),
        (dict(targets="abc"), "targets must be numbers"),
        (dict(model=_model(7)), "the model has 7 records but the matrix has 600 columns"),
        (dict(matrix=np.eye(3)), "matrix must be a jaxcal.TargetMatrix"),
        (dict(epochs=-1), "must not be negative"),
        (dict(loss="l1"), "loss must be 'relative' or 'mse'"),
        (dict(lambda_l0=-1.0), "lambda_l0 must be finite and non-negative"),
        (dict(model=_model(600, use_gates=False)), r"lambda_l0 > 0 needs a model with gates"),
        (dict(uniforms=np.zeros((3, 600))), r"uniforms must have shape \(epochs, n_records\)"),
        (dict(chunk_epochs=0), "chunk_epochs must be positive"),
        (dict(log_weight_jitter_sd=-1.0), "log_weight_jitter_sd must not be negative"),
    ],
)
def test_fit_rejects(problem, matrix, change, match, ill_typed_input):
    arguments = dict(model=_model(600), matrix=matrix, targets=problem.targets) | change
    with pytest.raises(ValueError, match=match):
        _fit(**arguments)


def test_fit_rejects_non_finite_targets(problem, matrix):
    targets = problem.targets.copy()
    targets[3] = np.inf
    with pytest.raises(ValueError, match="targets must be finite: 1 are not"):
        _fit(_model(600), matrix, targets)


def test_new_lambdas_and_rates_reuse_the_compiled_program(problem, matrix):
    """The lambdas, loss weights and learning rate are traced: other values compile nothing new."""
    from jaxcal._fit import _run_chunk

    model = _model(matrix.n_records)
    first = _fit(model, matrix, problem.targets, epochs=5, lambda_l0=1e-3, learning_rate=0.15)
    compiled = _run_chunk._cached._cache_size()
    other = _fit(model, matrix, problem.targets, epochs=5, lambda_l0=3e-2, lambda_l2=1e-6, learning_rate=0.05)
    assert _run_chunk._cached._cache_size() == compiled
    assert not np.array_equal(first.weights, other.weights)
