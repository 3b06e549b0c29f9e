"""Record-sharded fitting over a device mesh: per-device blocks of records, one ``psum`` a step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._matrix import AbstractTargetMatrix, Layout, TargetMatrix, _check_length, host_coo, spmv, sum_dtype

AXIS = "records"
"""The mesh axis :func:`record_mesh` names; a user's mesh may name its one axis anything."""

AUTO_CHUNK_ABOVE = 2**26
"""Blocks with more nonzeros than this multiply ``DEFAULT_CHUNK`` nonzeros at a time by default."""

DEFAULT_CHUNK = 2**22


def select_devices(devices: int | str | Sequence[Any] | None = None, platform: str = "auto") -> list[Any]:
    """The devices to fit on: ``None`` or ``"all"`` for all of ``platform``'s, ``N`` for the first N,
    or the given devices. ``platform`` is ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``"auto"`` (JAX's
    default backend: a TPU or GPU when there is one, else the CPU)."""
    if platform not in ("auto", "cpu", "gpu", "tpu"):
        raise ValueError(f"platform must be 'auto', 'cpu', 'gpu' or 'tpu', got {platform!r}")
    if devices is not None and not isinstance(devices, (int, str)):
        chosen = list(devices)
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise ValueError("devices must be a count, 'all', or a non-empty sequence of jax devices")
        return chosen
    try:
        available = jax.devices() if platform == "auto" else jax.devices(platform)
    except RuntimeError:
        raise ValueError(f"no {platform} devices: JAX's default backend is {jax.default_backend()}") from None
    if devices is None or devices == "all":
        return available
    if isinstance(devices, str) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"devices must be a positive count or 'all', got {devices!r}")
    if devices > len(available):
        raise ValueError(
            f"asked for {devices} devices but {platform} has {len(available)}: {', '.join(str(d) for d in available)}"
        )
    return available[:devices]


def record_mesh(devices: int | str | Sequence[Any] | None = None, platform: str = "auto") -> Mesh:
    """A one-axis mesh (axis ``"records"``) over :func:`select_devices`'s devices."""
    return Mesh(np.array(select_devices(devices, platform)), (AXIS,))


def is_local(device: Any) -> bool:
    """Whether ``device`` belongs to this process (every device does, in one process)."""
    return device.process_index == jax.process_index()


def process_records(n_records: int, mesh: Mesh) -> tuple[int, int]:
    """The records (columns ``lo`` to ``hi``) whose blocks lie on this process's devices of
    ``mesh``, as :class:`ShardedMatrix` splits ``n_records``: what a process of a multi-process
    fit reads of the package (``load_package(..., records=...)``)."""
    block = _block_size(n_records, mesh.size)
    mine = [i for i, device in enumerate(mesh.devices.flat) if is_local(device)]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"process {jax.process_index()}'s devices must be one stretch of the mesh, got blocks {mine}")
    return min(mine[0] * block, n_records), min((mine[-1] + 1) * block, n_records)


def process_sum(x: np.ndarray) -> np.ndarray:
    """``x`` added up over the processes of a multi-process run (``x`` itself in one process),
    in its own dtype: the parts travel as bytes, which JAX's 32-bit arrays keep exact."""
    x = np.ascontiguousarray(x)
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    parts = np.asarray(multihost_utils.process_allgather(x.reshape(-1).view(np.uint8)))
    return parts.view(x.dtype).reshape(-1, *x.shape).sum(axis=0, dtype=x.dtype)


def _block_size(n_records: int, n_devices: int) -> int:
    return max(math.ceil(n_records / n_devices), 1)


def _on_mesh(x: Any, sharding: NamedSharding) -> Array:
    """``x`` placed as ``sharding`` says, each device's part cut from this host's copy: across
    processes, each process gives the parts of its own devices (its records; the rest of its
    copy is not read)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_on_mesh(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _to_host_device(x: Any, device: Any) -> Any:
    """A mesh-placed array whole on ``device`` of this process (gathered across processes)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return jax.device_put(x, device)
    if x.is_fully_replicated:
        return jax.device_put(x.addressable_data(0), device)
    from jax.experimental import multihost_utils

    return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)


@final
class ShardedMatrix(AbstractTargetMatrix):
    """X split by records (columns) into one block per device of a one-axis ``mesh``.

    Device ``d`` holds records ``[d * block, (d + 1) * block)`` as COO with local column ids,
    padded with zero values to one length (a multiple of ``chunk``); the last blocks are
    padded with empty records when the device count does not divide ``n_records``. ``mv``
    is a ``psum`` of the blocks' partial products. Each block keeps its records' nonzeros
    in the order of the whole matrix's ``layout``. With ``chunk``, the blocks multiply that
    many nonzeros at a time, so the products' temporaries are O(chunk), not O(nnz).

    In a fit, parameters, gradients and the optimizer state's per-parameter arrays stay with
    their device's records (found with ``optax.tree_map_params``), and each step is one
    compiled program on every device.
    """

    rows: Int[Array, " devices block_nnz"]
    cols: Int[Array, " devices block_nnz"]
    values: Float[Array, " devices block_nnz"]
    shape: tuple[int, int] = eqx.field(static=True)
    block: int = eqx.field(static=True)
    mesh: Mesh = eqx.field(static=True)
    layout: Layout = eqx.field(static=True, default="interleaved")
    chunk: int | None = eqx.field(static=True, default=None)

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    @property
    def axis(self) -> str:
        return self.mesh.axis_names[0]

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    @property
    def padded_records(self) -> int:
        return self.block * self.n_devices

    def local(self) -> _Block:
        """This device's block, inside ``shard_map``."""
        return _Block(
            rows=self.rows[0],
            cols=self.cols[0],
            values=self.values[0],
            shape=(self.n_targets, self.block),
            real_records=self.n_records,
            axis=self.axis,
            layout=self.layout,
            chunk=self.chunk,
        )

    def block_specs(self) -> ShardedMatrix:
        """This matrix with ``shard_map``'s partition spec in place of each array."""
        spec = PartitionSpec(self.axis)
        return eqx.tree_at(lambda m: (m.rows, m.cols, m.values), self, (spec, spec, spec))

    @property
    def host_device(self) -> Any:
        """Where gathered results go: the mesh's first device of this process."""
        return next(d for d in self.mesh.devices.flat if is_local(d))

    def shard_records(self, x: Array) -> Array:
        """A per-record array (first axis ``n_records``) padded with zeros and split by record."""
        padding = [(0, self.padded_records - self.n_records)] + [(0, 0)] * (np.ndim(x) - 1)
        return _on_mesh(np.pad(np.asarray(x), padding), NamedSharding(self.mesh, PartitionSpec(self.axis)))

    def unshard_records(self, x: Array) -> Array:
        """The inverse of :meth:`shard_records`, onto :attr:`host_device`."""
        return _to_host_device(x, self.host_device)[: self.n_records]

    def replicate(self, tree: Any) -> Any:
        """Every array of ``tree`` copied to every device of the mesh."""
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda x: _on_mesh(x, sharding), tree)

    def mv(self, w: Float[Array | np.ndarray, " n_records"]) -> Float[Array, " n_targets"]:
        """``X @ w``; ``w`` has ``n_records`` entries, or ``padded_records`` already split by record."""
        w = jnp.asarray(w)
        if w.shape != (self.padded_records,):
            _check_length("w", w, self.n_records)
            w = self.shard_records(w)
        return _sharded_mv(self, w)

    def rmv(self, r: Float[Array | np.ndarray, " n_targets"]) -> Float[Array, " n_records"]:
        """``X.T @ r``."""
        r = jnp.asarray(r)
        _check_length("r", r, self.n_targets)
        return _sharded_rmv(self, r)[: self.n_records]

    def record_sum(self, values: Array) -> Array:
        return jnp.sum(values[: self.n_records], dtype=sum_dtype(values))

    def record_key(self, key: PRNGKeyArray) -> PRNGKeyArray:
        return key

    def place_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        model, opt_state, shared, uniforms = tree
        model = jax.tree.map(self.shard_records, model)
        opt_state = _map_params(optimizer, opt_state, self.shard_records, self.replicate)
        uniforms = None if uniforms is None else self.shard_records(uniforms.T).T
        return model, opt_state, self.replicate(shared), uniforms

    def run_blocks(self, scan: Callable[..., Any], step: Any, *args: Any) -> Any:
        uniforms, model, opt_state, epochs = args
        by_record = PartitionSpec(self.axis)
        step_specs = eqx.tree_at(lambda s: s.matrix, jax.tree.map(lambda _: PartitionSpec(), step), self.block_specs())
        model_specs = jax.tree.map(lambda _: by_record, model)
        opt_specs = _map_params(step.optimizer, opt_state, lambda _: by_record, lambda _: PartitionSpec())
        uniform_specs = None if uniforms is None else PartitionSpec(None, self.axis)

        def local(step: Any, *args: Any) -> Any:
            return scan(eqx.tree_at(lambda s: s.matrix, step, step.matrix.local()), *args)

        return jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(step_specs, uniform_specs, model_specs, opt_specs, PartitionSpec()),
            out_specs=(model_specs, opt_specs, PartitionSpec()),
        )(step, *args)

    def gather_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        weights, model, opt_state, rest = tree
        first = self.host_device
        weights, model = jax.tree.map(self.unshard_records, (weights, model))
        opt_state = _map_params(optimizer, opt_state, self.unshard_records, lambda x: _to_host_device(x, first))
        return weights, model, opt_state, jax.tree.map(lambda x: _to_host_device(x, first), rest)

    @classmethod
    def from_matrix(cls, matrix: TargetMatrix, mesh: Mesh, *, chunk: int | None | str = "auto") -> ShardedMatrix:
        """Split a :class:`TargetMatrix` over ``mesh``; ``chunk``: nonzeros a step multiplies at
        a time, ``None`` for all, ``"auto"`` for ``DEFAULT_CHUNK`` in blocks above ``AUTO_CHUNK_ABOVE``."""
        arrays = (np.asarray(matrix.rows), np.asarray(matrix.cols), np.asarray(matrix.values))
        return cls._split(*arrays, matrix.shape, mesh, matrix.layout, chunk)

    @classmethod
    def from_coo(
        cls,
        rows: Any,
        cols: Any,
        values: Any,
        shape: tuple[int, int],
        mesh: Mesh,
        *,
        layout: Layout = "interleaved",
        chunk: int | None | str = "auto",
    ) -> ShardedMatrix:
        """From COO triplets, checked as :meth:`TargetMatrix.from_coo` checks them, without first
        placing the whole matrix on one device. Across processes each gives (at least) the
        nonzeros of its own records (:func:`process_records`)."""
        rows, cols, values, shape = host_coo(rows, cols, values, shape, layout)
        return cls._split(rows, cols, values, shape, mesh, layout, chunk)

    @classmethod
    def from_scipy(
        cls, matrix: Any, mesh: Mesh, *, layout: Layout = "interleaved", chunk: int | None | str = "auto"
    ) -> ShardedMatrix:
        """From any ``scipy.sparse`` matrix or array."""
        coo = matrix.tocoo()
        return cls.from_coo(coo.row, coo.col, coo.data, coo.shape, mesh, layout=layout, chunk=chunk)

    @classmethod
    def _split(
        cls,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        shape: tuple[int, int],
        mesh: Mesh,
        layout: Layout,
        chunk: int | None | str,
    ) -> ShardedMatrix:
        if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
            raise ValueError(f"mesh must be a one-axis jax.sharding.Mesh (see jaxcal.record_mesh), got {mesh!r}")
        n_targets, n_records = shape
        n_devices = mesh.size
        block = _block_size(n_records, n_devices)
        per_block = np.bincount(cols, minlength=block * n_devices).reshape(n_devices, block).sum(axis=1)
        if jax.process_count() > 1:  # each process has its own blocks' nonzeros: the longest of all
            mine = [is_local(d) for d in mesh.devices.flat]
            per_block = process_sum(np.where(mine, per_block, 0).astype(np.int64))
        longest = int(per_block.max(initial=0))
        if chunk == "auto":
            chunk = DEFAULT_CHUNK if longest > AUTO_CHUNK_ABOVE else None
        if chunk is not None and (isinstance(chunk, (str, bool)) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive integer, None or 'auto', got {chunk!r}")
        length = longest if chunk is None else max(math.ceil(longest / chunk), 1) * chunk
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        pieces: dict[str, list[jax.Array]] = {"rows": [], "cols": [], "values": []}
        for device, index in sharding.addressable_devices_indices_map((n_devices, length)).items():
            d = index[0].start or 0  # pyright: ignore[reportOptionalSubscript]
            mine = np.flatnonzero((cols >= d * block) & (cols < (d + 1) * block))
            pad = np.arange(length - mine.size, dtype=np.int32)
            # Padding adds zeros, spread over rows and records (no chain of additions into one
            # element); in row order it stays sorted by going to the last row.
            last_row = np.full_like(pad, max(n_targets - 1, 0))
            pad_rows = pad % max(n_targets, 1) if layout == "interleaved" else last_row
            block_arrays = {
                "rows": np.concatenate([rows[mine], pad_rows]),
                "cols": np.concatenate([cols[mine] - np.int32(d * block), pad % block]),
                "values": np.concatenate([values[mine], np.zeros(pad.size, np.float32)]),
            }
            for name, array in block_arrays.items():
                pieces[name].append(jax.device_put(array[None], device))
        arrays = {
            name: jax.make_array_from_single_device_arrays((n_devices, length), sharding, parts)
            for name, parts in pieces.items()
        }
        return cls(**arrays, shape=shape, block=block, mesh=mesh, layout=layout, chunk=chunk)


@final
class _Block(AbstractTargetMatrix):
    """One device's block inside ``shard_map``: ``mv`` sums the blocks' partial products, and
    ``record_sum`` skips the padding records and adds up across devices."""

    rows: Int[Array, " block_nnz"]
    cols: Int[Array, " block_nnz"]
    values: Float[Array, " block_nnz"]
    shape: tuple[int, int] = eqx.field(static=True)
    """Targets, and records in this block (padding included)."""
    real_records: int = eqx.field(static=True)
    """Records in the whole matrix."""
    axis: str = eqx.field(static=True)
    layout: Layout = eqx.field(static=True)
    chunk: int | None = eqx.field(static=True)

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    def mv(self, w: Float[Array, " block"]) -> Float[Array, " n_targets"]:
        partial = spmv(
            self.rows, self.cols, self.values, w, self.n_targets, sorted_out=self.layout == "rows", chunk=self.chunk
        )
        return jax.lax.psum(partial, self.axis)

    def rmv(self, r: Float[Array, " n_targets"]) -> Float[Array, " block"]:
        return spmv(self.cols, self.rows, self.values, r, self.n_records, chunk=self.chunk)

    def record_sum(self, values: Array) -> Array:
        first = jax.lax.axis_index(self.axis) * self.n_records
        real = jnp.arange(self.n_records) + first < self.real_records
        dtype = sum_dtype(values)
        return jax.lax.psum(jnp.sum(jnp.where(real, values, jnp.zeros_like(values)), dtype=dtype), self.axis)

    def record_key(self, key: PRNGKeyArray) -> PRNGKeyArray:
        """This device's own stream of ``key``."""
        return jax.random.fold_in(key, jax.lax.axis_index(self.axis))

    # Inside shard_map the state is already this device's: nothing to place or gather.
    def place_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        return tree

    def run_blocks(self, scan: Callable[..., Any], step: Any, *args: Any) -> Any:
        return scan(step, *args)

    def gather_state(self, tree: Any, optimizer: optax.GradientTransformation | None = None) -> Any:
        return tree


def _map_params(
    optimizer: optax.GradientTransformation | None,
    opt_state: Any,
    params: Callable[[Any], Any],
    others: Callable[[Any], Any],
) -> Any:
    """``params`` on the optimizer state's per-parameter arrays (those that mirror the model, as
    ``optax.tree_map_params`` finds them), ``others`` on the rest (counts, learning rates)."""
    if optimizer is None:
        raise ValueError("placing an optimizer state by record needs its optimizer")
    return optax.tree_map_params(optimizer, params, opt_state, transform_non_params=others)


@eqx.filter_jit
def _sharded_mv(matrix: ShardedMatrix, w: Float[Array, " padded"]) -> Float[Array, " n_targets"]:
    spec = PartitionSpec(matrix.axis)
    return jax.shard_map(
        lambda m, w: m.local().mv(w), mesh=matrix.mesh, in_specs=(matrix.block_specs(), spec), out_specs=PartitionSpec()
    )(matrix, w)


@eqx.filter_jit
def _sharded_rmv(matrix: ShardedMatrix, r: Float[Array, " n_targets"]) -> Float[Array, " padded"]:
    spec = PartitionSpec(matrix.axis)
    return jax.shard_map(
        lambda m, r: m.local().rmv(r),
        mesh=matrix.mesh,
        in_specs=(matrix.block_specs(), PartitionSpec()),
        out_specs=spec,
    )(matrix, r)
