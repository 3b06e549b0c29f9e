"""Record-sharded fits on 4 and 8 fake CPU devices against the single-device fit.

JAX fixes its device count when its backend starts, which other tests in this process (or
this pytest-xdist worker) have already done; so the sharded fits run in a fresh process
(this file run as a script, with the fake devices set in its environment) that writes its
numbers to a file, and the single-device references are computed here.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _fitting import fit

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem

N_RECORDS = 601  # divisible by neither 4 nor 8
EPOCHS = 50


def _problem():
    return policyengine_shaped_problem(
        N_RECORDS, n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5
    )


def _model():
    return jaxcal.CalibrationWeights.init(
        N_RECORDS, key=jax.random.key(42), init_weights=100.0, init_keep_prob=0.9, beta=0.35
    )


def _uniforms():
    return np.random.default_rng(1).uniform(size=(EPOCHS, N_RECORDS)).astype(np.float32)


def _cases(problem):
    """Fits compared single-device vs sharded: keyword arguments of ``fit`` besides the mesh."""
    common = dict(key=jax.random.key(0), epochs=EPOCHS, log_weight_jitter_sd=0.05)
    return {
        # Gates with the same draws; a penalty that drops records; L2, groups, multipliers.
        "gates": common
        | dict(
            uniforms=_uniforms(),
            lambda_l0=1e-2,
            lambda_l2=1e-6,
            target_groups=problem.target_groups % 3,
            group_multipliers={1: 2.0},
        ),
        # No gates, no draws: the key only jitters the start.
        "no_gates": common | dict(lambda_l0=0.0, loss="mse", learning_rate=0.05),
    }


def _arrays(result):
    return {
        "weights": np.asarray(result.weights),
        "predictions": np.asarray(result.predictions),
        "log_alpha": np.asarray(result.model.log_alpha),
        "total": np.asarray(result.history.total),
        "l0": np.asarray(result.history.l0),
        "l2": np.asarray(result.history.l2),
        "n_active": np.asarray(result.history.n_active),
    }


def _worker(devices: int, out: str) -> None:
    """The sharded side, in a process with ``devices`` fake CPU devices."""
    from jaxcal import _fit

    assert jax.device_count() == devices, jax.devices()
    problem, model = _problem(), _model()
    matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix)
    mesh = jaxcal.record_mesh(devices)
    saved = {}
    for name, kwargs in _cases(problem).items():
        for arg, value in _arrays(fit(model, matrix, problem.targets, mesh=mesh, **kwargs)).items():
            saved[f"{name}/{arg}"] = value
    # The chunked kernels (8 nonzeros at a time) under the same fit.
    chunked = jaxcal.ShardedMatrix.from_matrix(matrix, mesh, chunk=8)
    assert chunked.chunk == 8
    result = fit(model, chunked, problem.targets, **_cases(problem)["gates"])
    saved["chunked/weights"] = np.asarray(result.weights)
    w = np.random.default_rng(2).uniform(size=N_RECORDS).astype(np.float32)
    saved["chunked/mv"] = np.asarray(chunked.mv(w))
    saved["chunked/rmv"] = np.asarray(chunked.rmv(problem.targets))

    # Draws from the key: one stream per device; deterministic; resumable.
    kwargs = dict(key=jax.random.key(3), lambda_l0=1e-2, log_weight_jitter_sd=0.05, chunk_epochs=15)
    compiled = []
    run_chunk = _fit._run_chunk

    def spy(*args):
        compiled.append(run_chunk.lower(*args).compile().compiled.as_text())
        return run_chunk(*args)

    _fit._run_chunk = spy
    straight = fit(model, matrix, problem.targets, epochs=30, devices=devices, **kwargs)
    _fit._run_chunk = run_chunk
    again = fit(model, matrix, problem.targets, epochs=30, devices=devices, **kwargs)
    first = fit(model, matrix, problem.targets, epochs=15, devices=devices, **kwargs)
    rest = fit(
        first.model,
        matrix,
        problem.targets,
        epochs=15,
        devices=devices,
        opt_state=first.opt_state,
        start_epoch=first.epochs,
        **kwargs,
    )
    saved |= {
        "keyed/weights": np.asarray(straight.weights),
        "keyed/again": np.asarray(again.weights),
        "keyed/resumed": np.asarray(rest.weights),
        "keyed/total": np.asarray(straight.history.total),
        "block": np.asarray(chunked.block),
        "hlo": np.asarray(compiled[0]),
    }
    np.savez(out, **saved)


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def matrix(problem):
    return jaxcal.TargetMatrix.from_scipy(problem.matrix)


@pytest.fixture(scope="module")
def references(problem, matrix):
    model = _model()
    return {name: _arrays(fit(model, matrix, problem.targets, **kwargs)) for name, kwargs in _cases(problem).items()}


def _run_worker(devices: int, tmp_path) -> dict:
    out = tmp_path / "sharded.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    done = subprocess.run(
        [sys.executable, __file__, str(devices), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    with np.load(out) as saved:
        return dict(saved)


def _close(actual, expected, rtol):
    """``max |a - e| <= rtol * max |e|``, and the same exact zeros (records dropped).

    Sharded and single-device fits add the partial products in different orders; float32
    rounding of ``X @ w`` (about 1e-7) then grows over the Adam steps. Measured to the
    scale of the weights it stays near 2e-6; elementwise it reaches a few 1e-4 in records
    whose gate is about to close, where a change of 1e-6 in ``log_alpha`` is a hundred
    times larger a change relative to the small weight.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual == 0, expected == 0)
    assert np.max(np.abs(actual - expected), initial=0) <= rtol * np.max(np.abs(expected), initial=0)


@pytest.mark.parametrize("devices", [4, 8])
def test_sharded_fit_matches_the_single_device_fit(devices, problem, matrix, references, tmp_path):
    sharded = _run_worker(devices, tmp_path)
    model = _model()
    reference = references["gates"]
    for name in ("gates", "no_gates"):
        expected = references[name]
        _close(sharded[f"{name}/weights"], expected["weights"], 1e-5)
        _close(sharded[f"{name}/predictions"], expected["predictions"], 1e-5)
        for field in ("total", "l0", "l2"):
            _close(sharded[f"{name}/{field}"], expected[field], 1e-5)
        np.testing.assert_array_equal(sharded[f"{name}/n_active"], expected["n_active"])
    # Records were dropped, and the sharded fit dropped the same ones.
    assert reference["n_active"][-1] < 0.9 * N_RECORDS
    # Without gates, log_alpha is untouched on every device.
    np.testing.assert_array_equal(sharded["no_gates/log_alpha"], model.log_alpha)

    # Chunked kernels: the same fit, and the products against scipy.
    _close(sharded["chunked/weights"], reference["weights"], 1e-5)
    w = np.random.default_rng(2).uniform(size=N_RECORDS).astype(np.float32)
    np.testing.assert_allclose(sharded["chunked/mv"], problem.matrix @ w.astype(np.float64), rtol=1e-5)
    np.testing.assert_allclose(sharded["chunked/rmv"], problem.matrix.T @ problem.targets.astype(np.float64), rtol=1e-5)

    # With draws from the key: device d's draw of epoch e is uniform(fold_in(fold_in(k, e), d)),
    # k the draw half of the key; fed those draws, the single-device fit takes the same steps.
    block = int(sharded["block"])
    assert block == -(-N_RECORDS // devices)
    draw_key = jax.random.split(jax.random.key(3))[1]
    draws = np.stack(
        [
            np.concatenate(
                [
                    jax.random.uniform(jax.random.fold_in(jax.random.fold_in(draw_key, e), d), (block,))
                    for d in range(devices)
                ]
            )[:N_RECORDS]
            for e in range(30)
        ]
    )
    by_hand = fit(
        model,
        matrix,
        problem.targets,
        key=jax.random.key(3),
        epochs=30,
        lambda_l0=1e-2,
        log_weight_jitter_sd=0.05,
        uniforms=draws,
    )
    _close(sharded["keyed/weights"], by_hand.weights, 1e-5)
    _close(sharded["keyed/total"], by_hand.history.total, 1e-5)
    np.testing.assert_array_equal(sharded["keyed/again"], sharded["keyed/weights"])
    np.testing.assert_array_equal(sharded["keyed/resumed"], sharded["keyed/weights"])

    # The compiled step keeps the weights where they are: no gather, one all-reduce of the
    # n_targets partial predictions (with at most scalars beside it) per step.
    hlo = str(sharded["hlo"])
    assert not re.search(r"all-gather|all-to-all|collective-permute|reduce-scatter", hlo)
    reduced = re.findall(r"= (\([^)]*\)|\S+) all-reduce\(", hlo)
    shapes = [s for group in reduced for s in re.findall(r"\w+\[[\d,]*\]", group)]
    assert [s for s in shapes if not s.endswith("[]")] == [f"f32[{matrix.n_targets}]"], reduced


def test_one_device_mesh_matches_the_plain_fit(problem, matrix, references):
    """In this process: a mesh of one device, chunked, through ``devices=1``."""
    kwargs = _cases(problem)["gates"]
    seen = []
    result = fit(
        _model(),
        matrix,
        problem.targets,
        devices=1,
        chunk_epochs=25,
        callback=lambda r: seen.append((r.epochs, r.weights.shape, r.history.total.shape)),
        **kwargs,
    )
    assert seen == [(25, (N_RECORDS,), (25,)), (50, (N_RECORDS,), (50,))]
    _close(result.weights, references["gates"]["weights"], 1e-5)
    assert result.weights.shape == (N_RECORDS,) and result.model.n_records == N_RECORDS
    chunked = jaxcal.ShardedMatrix.from_matrix(matrix, jaxcal.record_mesh(1), chunk=16)
    assert chunked.rows.shape[1] % 16 == 0 and chunked.rows.shape[1] >= matrix.nnz
    result = fit(_model(), chunked, problem.targets, **kwargs)
    _close(result.weights, references["gates"]["weights"], 1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_product_and_its_gradients_match_the_plain_one(matrix, chunk):
    from jaxcal._matrix import spmv

    pad = -matrix.nnz % chunk
    rows, cols, values = (jnp.pad(a, (0, pad)) for a in (matrix.rows, matrix.cols, matrix.values))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=matrix.n_records), jnp.float32)
    r = jnp.asarray(np.random.default_rng(1).normal(size=matrix.n_targets), jnp.float32)

    def loss(values, x, chunk):
        return jnp.sum(r * spmv(rows, cols, values, x, matrix.n_targets, chunk=chunk))

    plain = jax.value_and_grad(loss, argnums=(0, 1))(values, x, None)
    chunked = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(values, x, chunk)
    np.testing.assert_allclose(chunked[0], plain[0], rtol=1e-5)
    # d/dx is X.T @ r (the transposed chunked product); d/dvalues is r[rows] * x[cols].
    np.testing.assert_allclose(chunked[1][1], matrix.rmv(r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked[1][0], r[rows] * x[cols], rtol=1e-6)


def test_chunked_product_keeps_its_temporaries_to_the_chunk():
    """The compiled gradient of ``sum(spmv(x)**2)``: O(nnz) temporaries plain, O(chunk) chunked."""
    from jaxcal._matrix import spmv

    nnz, n_targets, n_records, chunk = 400_000, 100, 2_000, 4_000
    rng = np.random.default_rng(0)
    rows = jnp.asarray(rng.integers(0, n_targets, nnz), jnp.int32)
    cols = jnp.asarray(rng.integers(0, n_records, nnz), jnp.int32)
    values = jnp.asarray(rng.uniform(size=nnz), jnp.float32)

    def temporaries(chunk):
        def loss(x):
            return jnp.sum(spmv(rows, cols, values, x, n_targets, chunk=chunk) ** 2)

        compiled = jax.jit(jax.value_and_grad(loss)).lower(jnp.ones(n_records, jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temporaries(None) >= 4 * nnz  # at least the gathered products
    # A few chunk-sized buffers and the vectors, whatever nnz is.
    assert temporaries(chunk) <= 4 * (4 * chunk + 4 * (n_records + n_targets))


def test_sharded_matrix_products_match_scipy(problem, matrix):
    sharded = jaxcal.ShardedMatrix.from_scipy(problem.matrix, jaxcal.record_mesh(1), layout="rows")
    w = np.random.default_rng(3).uniform(size=N_RECORDS).astype(np.float32)
    np.testing.assert_allclose(sharded.mv(w), problem.matrix @ w.astype(np.float64), rtol=1e-5)
    np.testing.assert_allclose(sharded.rmv(problem.targets), problem.matrix.T @ problem.targets, rtol=1e-5)
    assert sharded.shape == matrix.shape and sharded.block == N_RECORDS and sharded.chunk is None


def test_select_devices():
    assert jaxcal.select_devices() == jax.devices()
    assert jaxcal.select_devices("all", "cpu") == jax.devices("cpu")
    assert jaxcal.select_devices(1) == jax.devices()[:1]
    assert jaxcal.select_devices(jax.devices()[:1]) == jax.devices()[:1]
    mesh = jaxcal.record_mesh(1)
    assert mesh.axis_names == ("records",) and list(mesh.devices.flat) == jax.devices()[:1]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: jaxcal.select_devices(jax.device_count() + 1), r"asked for \d+ devices but auto has"),
        (lambda: jaxcal.select_devices(0), "devices must be a positive count or 'all'"),
        (lambda: jaxcal.select_devices("some"), "devices must be a positive count or 'all'"),
        (lambda: jaxcal.select_devices([]), "non-empty sequence of jax devices"),
        (lambda: jaxcal.select_devices(platform="xpu"), "platform must be"),
    ],
)
def test_select_devices_rejects(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sharded_matrix_rejects_a_bad_chunk(matrix):
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        jaxcal.ShardedMatrix.from_matrix(matrix, jaxcal.record_mesh(1), chunk=0)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2])
