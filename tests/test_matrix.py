"""TargetMatrix against scipy: products, conversions, validation and the stored layouts."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse
from scipy import sparse as sp

from jaxcal import TargetMatrix

LAYOUTS = ("interleaved", "rows")
EMPTY = np.array([], dtype=np.int64)


def _random_values(rng, n):
    """Signed values over six decades, most not representable in float32."""
    return rng.normal(size=n) * 10.0 ** rng.uniform(-2, 4, size=n)


def _random(rng):
    # Rows 2 and 7 and columns 0, 5 and 13 stay empty; 40 draws over 7 x 11 cells repeat some.
    rows = rng.choice(np.setdiff1d(np.arange(9), [2, 7]), size=40)
    cols = rng.choice(np.setdiff1d(np.arange(14), [0, 5, 13]), size=40)
    return rows, cols, _random_values(rng, 40), (9, 14)


def _dense_column(rng):
    # Column 2 is full, the others hold 0 to a few entries: uneven column counts.
    rows = np.concatenate([np.arange(30), rng.integers(0, 30, size=12)])
    cols = np.concatenate([np.full(30, 2), rng.choice([0, 1, 4, 5], size=12)])
    return rows, cols, _random_values(rng, 42), (30, 6)


CASES = {
    "random": _random,
    "dense_column": _dense_column,
    "duplicates": lambda rng: (
        np.array([0, 0, 0, 1, 2, 2, 0]),
        np.array([1, 1, 1, 0, 3, 3, 2]),
        _random_values(rng, 7),
        (3, 4),
    ),
    "single": lambda rng: (np.array([2]), np.array([1]), np.array([-3.7]), (4, 3)),
    "all_empty": lambda rng: (EMPTY, EMPTY, np.array([]), (3, 5)),
    "no_targets": lambda rng: (EMPTY, EMPTY, np.array([]), (0, 4)),
    "no_records": lambda rng: (EMPTY, EMPTY, np.array([]), (4, 0)),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    rng = np.random.default_rng(list(CASES).index(request.param))
    rows, cols, values, shape = CASES[request.param](rng)
    return rows, cols, values, shape, rng


def _scipy(rows, cols, values, shape):
    """The reference: scipy sums duplicate entries."""
    return sp.coo_array((values, (rows, cols)), shape=shape).tocsr()


def _stored_order(rows, cols, shape, layout):
    """Built from values 1..nnz (exact in float32), the stored values reveal the permutation."""
    tags = np.arange(1, len(rows) + 1, dtype=np.float64)
    matrix = TargetMatrix.from_coo(rows, cols, tags, shape, layout=layout)
    return matrix, np.asarray(matrix.values).astype(np.int64) - 1


def _float64_matrix(rows, cols, values, shape, layout):
    """``from_coo``'s matrix with the float64 values in its stored order (call under x64)."""
    matrix, perm = _stored_order(rows, cols, shape, layout)
    return eqx.tree_at(lambda m: m.values, matrix, jnp.asarray(values[perm], jnp.float64))


@eqx.filter_jit
def _products(matrix, w, r):
    """One compiled call per shape: much cheaper than the eager primitives one by one."""
    return matrix.mv(w), matrix.rmv(r), matrix.row_sums()


def _assert_sum_close(actual, expected, scale, rtol):
    """Each entry is a sum; its rounding error is bounded by rtol * (sum of |terms|)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    bad = np.abs(actual - expected) > rtol * scale
    assert not bad.any(), f"{actual[bad]} != {expected[bad]} (scale {scale[bad]})"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_products_float64_match_scipy(case, layout):
    rows, cols, values, shape, rng = case
    X = _scipy(rows, cols, values, shape)
    w, r = rng.normal(size=shape[1]), rng.normal(size=shape[0])
    with jax.enable_x64(True):
        matrix = _float64_matrix(rows, cols, values, shape, layout)
        assert matrix.values.dtype == jnp.float64
        mv, rmv, row_sums = _products(matrix, jnp.asarray(w), jnp.asarray(r))
        assert mv.dtype == rmv.dtype == row_sums.dtype == jnp.float64
    _assert_sum_close(mv, X @ w, abs(X) @ abs(w), 1e-12)
    _assert_sum_close(rmv, X.T @ r, abs(X).T @ abs(r), 1e-12)
    _assert_sum_close(row_sums, X.sum(axis=1), abs(X).sum(axis=1), 1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_products_float32_match_scipy(case, layout):
    rows, cols, values, shape, rng = case
    matrix = TargetMatrix.from_coo(rows, cols, values, shape, layout=layout)
    # Reference in float64 on the float32-rounded inputs: what remains is the float32
    # accumulation error, at most (terms per sum, <= 42 here) * 2**-24 < 1e-5 of sum |terms|.
    X = _scipy(rows, cols, values.astype(np.float32).astype(np.float64), shape)
    w = rng.normal(size=shape[1]).astype(np.float32)
    r = rng.normal(size=shape[0]).astype(np.float32)
    mv, rmv, _ = _products(matrix, jnp.asarray(w), jnp.asarray(r))
    assert mv.dtype == rmv.dtype == jnp.float32
    _assert_sum_close(mv, X @ w, abs(X) @ abs(w), 1e-5)
    _assert_sum_close(rmv, X.T @ r, abs(X).T @ abs(r), 1e-5)


@eqx.filter_jit
def _gradient_and_rmv(matrix, w, t):
    """The gradient of 0.5 * |X w - t|^2 by autodiff, and X.T (X w - t) by rmv."""
    grad = jax.grad(lambda w: 0.5 * jnp.sum((matrix.mv(w) - t) ** 2))(w)
    return grad, matrix.rmv(matrix.mv(w) - t)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_through_mv_is_rmv_of_residual(case, layout):
    rows, cols, values, shape, rng = case
    X = _scipy(rows, cols, values, shape)
    w, t = rng.normal(size=shape[1]), rng.normal(size=shape[0])
    with jax.enable_x64(True):
        matrix = _float64_matrix(rows, cols, values, shape, layout)
        grad, rmv = _gradient_and_rmv(matrix, jnp.asarray(w), jnp.asarray(t))
        assert grad.dtype == jnp.float64
    residual = X @ w - t
    scale = abs(X).T @ (abs(X) @ abs(w) + abs(t))
    _assert_sum_close(grad, X.T @ residual, scale, 1e-12)
    _assert_sum_close(rmv, X.T @ residual, scale, 1e-12)


# Conversions use positive multiples of 1/4: float32 holds them and their sums exactly, and no
# duplicates cancel, so the number of distinct cells is the dense matrix's count of nonzeros.
def _exact_coo():
    rows, cols, _, shape = _random(np.random.default_rng(7))
    values = np.random.default_rng(8).integers(1, 40, size=len(rows)) / 4
    return rows, cols, values, shape


def _assert_round_trips(matrix, dense):
    np.testing.assert_array_equal(np.asarray(matrix.to_bcoo().todense()), dense)
    as_scipy = matrix.to_scipy()
    assert isinstance(as_scipy, sp.csr_array)
    np.testing.assert_array_equal(as_scipy.toarray(), dense)
    np.testing.assert_array_equal(matrix.row_sums(), dense.sum(axis=1))
    assert (matrix.n_targets, matrix.n_records) == matrix.shape == dense.shape
    assert matrix.rows.dtype == matrix.cols.dtype == jnp.int32
    assert matrix.values.dtype == jnp.float32


SCIPY_FORMATS = [sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array, sp.coo_array]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fmt", SCIPY_FORMATS, ids=lambda f: f.__name__)
def test_from_scipy(fmt, layout):
    rows, cols, values, shape = _exact_coo()
    source = fmt(sp.coo_matrix((values, (rows, cols)), shape=shape))  # coo keeps duplicates
    matrix = TargetMatrix.from_scipy(source, layout=layout)
    assert matrix.nnz == source.nnz
    assert matrix.layout == layout
    _assert_round_trips(matrix, source.toarray())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_from_coo_keeps_duplicates(layout):
    rows, cols, values, shape = _exact_coo()
    matrix = TargetMatrix.from_coo(rows, cols, values, shape, layout=layout)
    assert matrix.nnz == len(rows) > _scipy(rows, cols, values, shape).nnz
    _assert_round_trips(matrix, _scipy(rows, cols, values, shape).toarray())


@functools.cache
def _bcoo_variants():
    rows, cols, values, shape = _exact_coo()
    dense = _scipy(rows, cols, values, shape).toarray()
    n_cells = np.count_nonzero(dense)
    raw = jsparse.BCOO((jnp.asarray(values, jnp.float32), jnp.stack([rows, cols], 1)), shape=shape)
    # Padding written by hand, with nonzero data that must not leak into the matrix.
    pad_index = np.array([[shape[0], shape[1]]] * 3)
    padded = jsparse.BCOO(
        (jnp.concatenate([raw.data, jnp.full(3, 99.0)]), jnp.concatenate([raw.indices, pad_index])),
        shape=shape,
    )
    summed = raw.sum_duplicates(nse=n_cells + 5)
    assert (np.asarray(summed.indices[-5:]) == shape).all()  # what the test relies on
    return dense, {
        "fromdense": (jsparse.BCOO.fromdense(jnp.asarray(dense)), n_cells),
        "fromdense_padded": (jsparse.BCOO.fromdense(jnp.asarray(dense), nse=n_cells + 4), n_cells),
        "duplicates": (raw, len(rows)),
        "sum_duplicates_padded": (summed, n_cells),
        "hand_padded": (padded, len(rows)),
    }


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "variant",
    ["fromdense", "fromdense_padded", "duplicates", "sum_duplicates_padded", "hand_padded"],
)
def test_from_bcoo(variant, layout):
    dense, variants = _bcoo_variants()
    bcoo, nnz = variants[variant]
    matrix = TargetMatrix.from_bcoo(bcoo, layout=layout)
    assert matrix.nnz == nnz
    _assert_round_trips(matrix, dense)


def test_index_and_value_dtypes_are_normalised():
    matrix = TargetMatrix.from_coo(
        np.array([1, 0], np.uint16), np.array([2, 0], np.int64), np.array([3, -4], np.int64), (2, 3)
    )
    assert matrix.rows.dtype == matrix.cols.dtype == jnp.int32
    assert matrix.values.dtype == jnp.float32
    np.testing.assert_array_equal(matrix.to_scipy().toarray(), [[-4, 0, 0], [0, 0, 3]])


VALID = dict(rows=np.array([0, 1]), cols=np.array([0, 2]), values=np.array([1.0, 2.0]), shape=(2, 3))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "change, match",
    [
        (dict(values=np.array([np.nan, 1.0])), "finite"),
        (dict(values=np.array([1.0, np.inf])), "finite"),
        (dict(values=np.array([1.0, -np.inf])), "finite"),
        (dict(values=np.array([1.0, 1e39])), "finite in float32"),
        (dict(values=np.array([1 + 1j, 2])), "real numbers"),
        (dict(rows=np.array([0, 2])), "row index 2 is out of range"),
        (dict(cols=np.array([0, 3])), "column index 3 is out of range"),
        (dict(rows=np.array([-1, 0])), "row index -1 is out of range"),
        (dict(cols=np.array([0, -2])), "column index -2 is out of range"),
        (dict(shape=(-1, 3)), "negative"),
        (dict(shape=(2, -3)), "negative"),
        (dict(shape=(2, 3, 1)), "shape must be"),
        (dict(shape=(2**31, 3)), "int32"),
        (dict(shape=(2.7, 3)), "two integers"),
        (dict(rows=np.array([0])), "one length"),
        (dict(values=np.array([1.0, 2.0, 3.0])), "one length"),
        (dict(rows=np.array([0.0, 1.0])), "row indices must be integers"),
        (dict(cols=np.array([0.0, 2.0])), "column indices must be integers"),
        (dict(rows=np.array([[0, 1]])), "rows must be one-dimensional"),
        (dict(cols=np.array([[0], [2]])), "cols must be one-dimensional"),
        (dict(values=np.array([[1.0, 2.0]])), "values must be one-dimensional"),
        (dict(layout="columns"), "layout must be"),
    ],
)
def test_from_coo_rejects(change, match, ill_typed_input):
    with pytest.raises(ValueError, match=match):
        TargetMatrix.from_coo(**{**VALID, **change})


def _bcoo(data, indices, shape):
    """A BCOO of the given array shapes; the number of leading batch and trailing dense
    dimensions follows from them."""
    return jsparse.BCOO((jnp.ones(data), jnp.zeros(indices, jnp.int32)), shape=shape)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: TargetMatrix.from_scipy(np.eye(2)), "expected a scipy.sparse"),
        (lambda: TargetMatrix.from_scipy(sp.coo_array(np.array([1.0, 0.0]))), "2-D"),
        (lambda: TargetMatrix.from_scipy(sp.csr_array(np.array([[np.nan]]))), "finite"),
        (lambda: TargetMatrix.from_bcoo(np.eye(2)), "expected a BCOO"),
        (lambda: TargetMatrix.from_bcoo(_bcoo((2, 1), (2, 1, 2), (2, 3, 3))), "n_batch=1"),
        (lambda: TargetMatrix.from_bcoo(_bcoo((1, 3), (1, 1), (2, 3))), "n_dense=1"),
        # Only an index equal to the shape in *both* dimensions is padding.
        (
            lambda: TargetMatrix.from_bcoo(jsparse.BCOO((jnp.ones(1), jnp.array([[2, 0]])), shape=(2, 2))),
            "row index 2 is out of range",
        ),
    ],
)
def test_from_scipy_and_bcoo_reject(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_from_coo_accepts_empty_lists():
    matrix = TargetMatrix.from_coo([], [], [], (2, 3))
    assert matrix.nnz == 0 and matrix.rows.dtype == jnp.int32
    np.testing.assert_array_equal(matrix.mv(jnp.ones(3)), [0.0, 0.0])


@pytest.mark.parametrize(
    "product, length, match",
    [("mv", 2, r"w must have shape \(3,\)"), ("rmv", 3, r"r must have shape \(2,\)")],
)
def test_products_reject_vectors_of_the_wrong_length(product, length, match):
    matrix = TargetMatrix.from_coo(**VALID)
    with pytest.raises(ValueError, match=match):
        getattr(matrix, product)(jnp.ones(length))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stored_entries_are_a_permutation_of_the_input(case, layout):
    rows, cols, _, shape, _ = case
    matrix, perm = _stored_order(rows, cols, shape, layout)
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(rows)))
    np.testing.assert_array_equal(matrix.rows, rows[perm])
    np.testing.assert_array_equal(matrix.cols, cols[perm])


def test_rows_layout_is_sorted_by_row_then_column(case):
    rows, cols, _, shape, _ = case
    matrix = TargetMatrix.from_coo(rows, cols, np.ones(len(rows)), shape, layout="rows")
    key = np.asarray(matrix.rows, np.int64) * max(shape[1], 1) + np.asarray(matrix.cols)
    assert (np.diff(key) >= 0).all()


def test_interleaved_layout_takes_the_kth_entry_of_every_column(case):
    """Documented order: round k holds the k-th entry of each column with more than k, by
    column; each column's entries, in round order, are its input entries rotated."""
    rows, cols, _, shape, _ = case
    matrix, perm = _stored_order(rows, cols, shape, "interleaved")
    counts = np.bincount(cols, minlength=shape[1])
    rounds = [np.flatnonzero(counts > k) for k in range(counts.max(initial=0))]
    np.testing.assert_array_equal(matrix.cols, np.concatenate([EMPTY, *rounds]))
    for col in np.flatnonzero(counts):
        stored, given = perm[np.asarray(matrix.cols) == col], np.flatnonzero(cols == col)
        shift = int(np.flatnonzero(given == stored[0])[0])
        np.testing.assert_array_equal(stored, np.roll(given, -shift))
