"""The sparse target matrix X (targets x records) in the layout the engine computes with."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

if TYPE_CHECKING:  # jax.experimental.sparse imports scipy: a third of a second, only when used
    import optax
    from jax.experimental import sparse as jsparse

Layout = Literal["interleaved", "rows"]

_IN_BOUNDS = "promise_in_bounds"


class AbstractTargetMatrix(eqx.Module):
    """What a fit needs of X (targets x records), wherever its records live.

    ``mv`` is ``X @ w`` and ``rmv`` is ``X.T @ r``; ``record_sum`` adds one value per record
    over the real records and ``record_key`` gives the records' own PRNG stream, so that a
    step written once runs on one device (:class:`TargetMatrix`) or inside ``shard_map`` on
    one device's block (see :class:`jaxcal.ShardedMatrix`). ``place_state``, ``run_blocks``
    and ``gather_state`` put a fit's state where the records are, run a compiled chunk there
    and bring the state back.
    """

    shape: eqx.AbstractVar[tuple[int, int]]

    @property
    def n_targets(self) -> int:
        return self.shape[0]

    @property
    def n_records(self) -> int:
        return self.shape[1]

    @property
    @abc.abstractmethod
    def dtype(self) -> Any:
        """The values' dtype, which a fit computes in."""

    @abc.abstractmethod
    def mv(self, w: Float[Array, " n_records"]) -> Float[Array, " n_targets"]:
        """``X @ w``."""

    @abc.abstractmethod
    def rmv(self, r: Float[Array, " n_targets"]) -> Float[Array, " n_records"]:
        """``X.T @ r``."""

    @abc.abstractmethod
    def record_sum(self, values: Array) -> Array:
        """``values`` (one per record) summed over the real records."""

    @abc.abstractmethod
    def record_key(self, key: PRNGKeyArray) -> PRNGKeyArray:
        """The key these records draw from, given the fit's key for the epoch."""

    @abc.abstractmethod
    def place_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        """``tree`` = ``(model, opt_state, shared, uniforms)`` placed for a fit: the model's arrays and
        the optimizer state's per-parameter arrays by record, ``shared`` replicated, ``uniforms``
        (epochs x records, or None) split by record."""

    @abc.abstractmethod
    def run_blocks(self, scan: Callable[..., Any], step: Any, *args: Any) -> Any:
        """``scan(step, uniforms, model, opt_state, epochs)`` where the records are (``step.matrix``
        is this matrix; inside, one device's block)."""

    @abc.abstractmethod
    def gather_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        """The inverse of :meth:`place_state` for ``(weights, model, opt_state, rest)``: record
        arrays trimmed to ``n_records``, everything on one device."""


@final
class TargetMatrix(AbstractTargetMatrix):
    """X as int32 COO with float32 values: ``mv`` is ``X @ w``, ``rmv`` is ``X.T @ r``.

    Both products are one gather and one ``segment_sum`` over the nonzeros; the gradient of
    ``mv`` is ``rmv`` through the same arrays. Build it with :meth:`from_bcoo`,
    :meth:`from_scipy` or :meth:`from_coo`, which validate the input and choose the order
    of the nonzeros (``layout``):

    - ``"interleaved"`` (default): the k-th nonzero of every column, column by column, for
      k = 0, 1, ... (each column's entries rotated by a column-dependent offset). Reads of
      ``w`` and writes to ``X.T @ r`` then run through memory in order, and consecutive
      writes to ``X @ w`` land in different rows, so neither product stalls on a chain of
      additions into one element. About 2x faster on CPU than row order.
    - ``"rows"``: sorted by (row, column), ``segment_sum`` told the rows are sorted.
    """

    rows: Int[Array, " nnz"]
    cols: Int[Array, " nnz"]
    values: Float[Array, " nnz"]
    shape: tuple[int, int] = eqx.field(static=True)
    layout: Layout = eqx.field(static=True, default="interleaved")

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def mv(self, w: Float[Array, " n_records"]) -> Float[Array, " n_targets"]:
        """``X @ w``."""
        _check_length("w", w, self.n_records)
        return spmv(self.rows, self.cols, self.values, w, self.n_targets, sorted_out=self.layout == "rows")

    def rmv(self, r: Float[Array, " n_targets"]) -> Float[Array, " n_records"]:
        """``X.T @ r``."""
        _check_length("r", r, self.n_targets)
        return spmv(self.cols, self.rows, self.values, r, self.n_records)

    def record_sum(self, values: Array) -> Array:
        return jnp.sum(values, dtype=sum_dtype(values))

    def record_key(self, key: PRNGKeyArray) -> PRNGKeyArray:
        return key

    def place_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        return tree

    def run_blocks(self, scan: Callable[..., Any], step: Any, *args: Any) -> Any:
        return scan(step, *args)

    def gather_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        return tree

    def row_sums(self) -> Float[Array, " n_targets"]:
        """``X @ 1``: a target whose row sums to 0 cannot be reached by any weights."""
        return self.mv(jnp.ones(self.n_records, self.values.dtype))

    def to_bcoo(self) -> jsparse.BCOO:
        from jax.experimental import sparse as jsparse

        return jsparse.BCOO((self.values, jnp.stack([self.rows, self.cols], axis=1)), shape=self.shape)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.csr_array`` with the same entries (duplicates summed)."""
        from scipy import sparse

        return sparse.csr_array(
            (np.asarray(self.values), (np.asarray(self.rows), np.asarray(self.cols))),
            shape=self.shape,
        )

    @classmethod
    def from_coo(
        cls,
        rows: Any,
        cols: Any,
        values: Any,
        shape: tuple[int, int],
        *,
        layout: Layout = "interleaved",
    ) -> TargetMatrix:
        """From COO triplets; duplicates are kept and add up, as in scipy.

        Raises ``ValueError`` naming the problem for a bad shape, mismatched lengths,
        non-integer or out-of-range indices, and NaN or infinite values.
        """
        rows, cols, values, shape = host_coo(rows, cols, values, shape, layout, place=jnp.asarray)
        return cls(rows=rows, cols=cols, values=values, shape=shape, layout=layout)

    @classmethod
    def from_scipy(cls, matrix: Any, *, layout: Layout = "interleaved") -> TargetMatrix:
        """From any ``scipy.sparse`` matrix or array."""
        from scipy import sparse

        if not sparse.issparse(matrix):
            raise ValueError(f"expected a scipy.sparse matrix, got {type(matrix).__name__}")
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got {matrix.ndim} dimensions")
        coo = matrix.tocoo()
        return cls.from_coo(coo.row, coo.col, coo.data, coo.shape, layout=layout)

    @classmethod
    def from_bcoo(cls, matrix: jsparse.BCOO, *, layout: Layout = "interleaved") -> TargetMatrix:
        """From a 2-D ``jax.experimental.sparse.BCOO`` (the builders' interchange type).

        Entries whose indices both equal the shape are BCOO's padding and are dropped; any
        other index out of range is an error.
        """
        from jax.experimental import sparse as jsparse

        if not isinstance(matrix, jsparse.BCOO):
            raise ValueError(f"expected a BCOO matrix, got {type(matrix).__name__}")
        if matrix.n_batch or matrix.n_dense or matrix.ndim != 2:
            raise ValueError(
                f"expected a 2-D BCOO without batch or dense dimensions, got shape "
                f"{matrix.shape} with n_batch={matrix.n_batch}, n_dense={matrix.n_dense}"
            )
        indices = np.asarray(matrix.indices)
        n_targets, n_records = _check_shape(matrix.shape)
        real = (indices[:, 0] != n_targets) | (indices[:, 1] != n_records)
        return cls.from_coo(
            indices[real, 0],
            indices[real, 1],
            np.asarray(matrix.data)[real],
            (n_targets, n_records),
            layout=layout,
        )


def spmv(
    out_index: Int[Array, " nnz"],
    in_index: Int[Array, " nnz"],
    values: Float[Array, " nnz"],
    x: Float[Array, " n_in"],
    n_out: int,
    *,
    sorted_out: bool = False,
    chunk: int | None = None,
) -> Float[Array, " n_out"]:
    """``y[out_index[k]] += values[k] * x[in_index[k]]`` over the nonzeros ``k``.

    One gather and one ``segment_sum``; or, with ``chunk`` (a divisor of nnz > 0), a
    ``lax.scan`` adding that many nonzeros at a time into ``y`` in place, whose gradient is
    the same chunked product transposed, so that the temporaries are O(chunk), not O(nnz).
    """
    if chunk is None:
        gathered = values * x.at[in_index].get(mode=_IN_BOUNDS)
        return jax.ops.segment_sum(
            gathered, out_index, num_segments=n_out, indices_are_sorted=sorted_out, mode=_IN_BOUNDS
        )
    return _chunked_spmv(n_out, sorted_out, chunk, out_index, in_index, values, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked_spmv(
    n_out: int, sorted_out: bool, chunk: int, out_index: Array, in_index: Array, values: Array, x: Array
) -> Array:
    def add_chunk(y: Array, start: Array | int) -> tuple[Array, None]:
        out_part, in_part, value_part = (
            jax.lax.dynamic_slice_in_dim(a, start, chunk) for a in (out_index, in_index, values)
        )
        gathered = value_part * x.at[in_part].get(mode=_IN_BOUNDS)
        return y.at[out_part].add(gathered, indices_are_sorted=sorted_out, mode=_IN_BOUNDS), None

    # The first chunk outside the loop: inside shard_map, y then varies across devices as
    # the nonzeros do, which the loop's carry must from its start.
    y, _ = add_chunk(jnp.zeros(n_out, x.dtype), 0)
    y, _ = jax.lax.scan(add_chunk, y, jnp.arange(chunk, values.shape[0], chunk, dtype=jnp.int32))
    return y


def _chunked_spmv_fwd(n_out, sorted_out, chunk, out_index, in_index, values, x):  # noqa: ANN001, ANN202
    y = _chunked_spmv(n_out, sorted_out, chunk, out_index, in_index, values, x)
    return y, (out_index, in_index, values, x)


def _chunked_spmv_bwd(n_out, sorted_out, chunk, residuals, cotangent):  # noqa: ANN001, ANN202
    out_index, in_index, values, x = residuals
    x_cotangent = _chunked_spmv(x.shape[0], False, chunk, in_index, out_index, values, cotangent)
    # Only when asked for (jit drops it otherwise): d y / d values, O(nnz).
    values_cotangent = cotangent.at[out_index].get(mode=_IN_BOUNDS) * x.at[in_index].get(mode=_IN_BOUNDS)
    return None, None, values_cotangent, x_cotangent


_chunked_spmv.defvjp(_chunked_spmv_fwd, _chunked_spmv_bwd)


def host_coo(
    rows: Any, cols: Any, values: Any, shape: Any, layout: Layout, *, place: Callable[[np.ndarray], Any] = np.asarray
) -> tuple[Any, Any, Any, tuple[int, int]]:
    """Validated int32/int32/float32 COO in the order of ``layout`` (see ``TargetMatrix.from_coo``),
    each array passed through ``place`` as soon as it is reordered."""
    n_targets, n_records = _check_shape(shape)
    rows, cols, values = (np.asarray(a) for a in (rows, cols, values))
    for name, a in (("rows", rows), ("cols", cols), ("values", values)):
        if a.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not rows.shape == cols.shape == values.shape:
        raise ValueError(
            f"rows, cols and values must have one length, got {rows.shape[0]}, {cols.shape[0]} and {values.shape[0]}"
        )
    if rows.shape[0] >= 2**31:
        raise ValueError(f"{rows.shape[0]} nonzeros exceed int32 indexing")
    rows = _check_indices("row", rows, n_targets)
    cols = _check_indices("column", cols, n_records)
    values = _check_values(values)
    if layout == "interleaved":
        order = _interleaved_order(cols, n_records)
    elif layout == "rows":
        order = np.lexsort((cols, rows))
    else:
        raise ValueError(f"layout must be 'interleaved' or 'rows', got {layout!r}")
    # One reordered copy at a time: the matrix may be most of the memory there is.
    rows = place(rows[order])
    cols = place(cols[order])
    values = place(values[order])
    return rows, cols, values, (n_targets, n_records)


def sum_dtype(values: Array) -> Any:
    """The dtype a record sum of ``values`` is taken in: int32 counts for booleans, else their own."""
    return jnp.int32 if values.dtype == bool else values.dtype


def _check_length(name: str, vector: Array, length: int) -> None:
    # Shapes are static, so this costs nothing under jit; the kernels trust their indices.
    if vector.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {vector.shape}")


def _check_shape(shape: Any) -> tuple[int, int]:
    if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) for s in shape):
        raise ValueError(f"shape must be two integers (n_targets, n_records), got {shape!r}")
    n_targets, n_records = (int(s) for s in shape)
    if n_targets < 0 or n_records < 0:
        raise ValueError(f"shape must not be negative, got {tuple(shape)}")
    if max(n_targets, n_records) >= 2**31:
        raise ValueError(f"shape {tuple(shape)} exceeds int32 indexing")
    return n_targets, n_records


def _check_indices(axis: str, index: np.ndarray, size: int) -> np.ndarray:
    if index.size:
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"{axis} indices must be integers, got dtype {index.dtype}")
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{axis} index {bad} is out of range for {size} {axis}s")
    return index.astype(np.int32, copy=False)


def _check_values(values: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"values must be real numbers, got dtype {values.dtype}")
    as_float32 = values.astype(np.float32, copy=False)
    finite = np.isfinite(as_float32)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"values must be finite in float32: {int((~finite).sum())} are not "
            f"(first at nonzero {first}: {values[first]!r})"
        )
    return as_float32


def _interleaved_order(cols: np.ndarray, n_records: int) -> np.ndarray:
    """Order nonzeros by (rotated rank within their column, column); see TargetMatrix.

    Written for memory: about 30 bytes a nonzero at the peak, in int32 where it can be.
    """
    by_col = np.argsort(cols, kind="stable")
    counts = np.bincount(cols, minlength=n_records).astype(np.int32)
    starts = (np.cumsum(counts, dtype=np.int64) - counts).astype(np.int32)
    # A multiplicative hash of the column id: neighbouring columns get unrelated rotations.
    hashed = (np.arange(n_records, dtype=np.uint64) * np.uint64(2654435761)) >> np.uint64(7)
    offset = (hashed % np.maximum(counts, 1).astype(np.uint64)).astype(np.int32)
    col_sorted = cols[by_col]
    rotated = np.arange(cols.shape[0], dtype=np.int32)
    rotated -= starts[col_sorted]
    rotated += offset[col_sorted]
    count = counts[col_sorted]
    del col_sorted
    np.subtract(rotated, count, out=rotated, where=rotated >= count)
    del count
    key_dtype = np.int16 if counts.max(initial=0) < 2**15 else np.int32
    return by_col[np.argsort(rotated.astype(key_dtype), kind="stable")]
