"""Calibration packages: the matrix, its targets and provenance, in a format safe to load.

A package is one ``.npz`` file read with ``allow_pickle=False``: loading it runs no code,
whoever wrote it. PolicyEngine's pickle packages are imported only on explicit request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pathlib
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import numpy as np
from jaxtyping import Float, Int, UInt64

from ._files import atomic_write, json_safe, sha256_arrays

if TYPE_CHECKING:  # pandas and scipy cost a third of a second each: imported when used
    import pandas as pd
    from jax.experimental import sparse as jsparse
    from scipy import sparse

    from .._matrix import Layout, TargetMatrix

FORMAT = "jaxcal-package"
FORMAT_VERSION = 1
TARGET_COLUMNS = ("variable", "geo_level", "geographic_id", "domain_variable", "value")
"""Columns every targets table has (PolicyEngine's ``target_overview``)."""
GEOGRAPHY_KEYS = ("state_fips", "cd_geoid", "block_geoid")
"""Per-column geography a package may carry."""
_PICKLE_MAGIC = b"\x80"
_INDEX_LIMIT = 2**31
"""The engine's indices are int32: a package has fewer rows and columns than this."""
_MAX_CHARS = 4096
"""The longest text entry a package's arrays hold (a target name, a GEOID)."""
_MAX_METADATA_CHARS = 1 << 24
_KIND_NAMES = {
    "U": "text",
    "f": "floats",
    "iu": "integers",
    "iuf": "real numbers",
    "b": "booleans",
    "biufU": "numbers or text",
    "iuU": "integers or text",
}


class PackageError(ValueError):
    """A package that cannot be read or is inconsistent; the message says what and why."""


_CHUNK = 1 << 20
"""Nonzeros a record-range read (and a row summary) takes at a time."""


@final
class RowSummary(eqx.Module):
    """What every process of a multi-process fit knows of the whole matrix, one entry per row:
    its sum (float64), its nonzero count, and a 64-bit hash of its (column, value) pairs (a sum
    of splitmix64 hashes, so it adds up over any split of the columns). Computed ``_CHUNK``
    nonzeros at a time, so a whole matrix and a streamed one give the same numbers."""

    sums: Float[np.ndarray, " n_targets"]
    nnz: Int[np.ndarray, " n_targets"]
    fingerprints: UInt64[np.ndarray, " n_targets"]

    @classmethod
    def of(cls, matrix: sparse.csr_array) -> RowSummary:
        summary = _RowAccumulator(matrix.indptr)
        for start in range(0, matrix.nnz, _CHUNK):
            summary.add(start, matrix.indices[start : start + _CHUNK], matrix.data[start : start + _CHUNK])
        return summary.result()

    def select(self, rows: np.ndarray) -> RowSummary:
        return RowSummary(self.sums[rows], self.nnz[rows], self.fingerprints[rows])


class _RowAccumulator:
    """Builds a :class:`RowSummary` from consecutive stretches of a CSR matrix's nonzeros."""

    def __init__(self, indptr: np.ndarray) -> None:
        self.indptr = np.asarray(indptr, np.int64)
        n_targets = self.indptr.size - 1
        self.sums = np.zeros(n_targets, np.float64)
        self.fingerprints = np.zeros(n_targets, np.uint64)

    def rows(self, start: int, size: int) -> np.ndarray:
        """The row of each of the nonzeros ``start .. start + size``."""
        return np.searchsorted(self.indptr, np.arange(start, start + size), side="right") - 1

    def add(self, start: int, cols: np.ndarray, values: np.ndarray, rows: np.ndarray | None = None) -> None:
        if not cols.size:
            return
        rows = self.rows(start, cols.size) if rows is None else rows
        firsts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        pairs = (cols.astype(np.uint64) << np.uint64(32)) | values.astype(np.float32).view(np.uint32).astype(np.uint64)
        self.sums[rows[firsts]] += np.add.reduceat(values.astype(np.float64), firsts)
        self.fingerprints[rows[firsts]] += np.add.reduceat(_splitmix64(pairs), firsts)

    def result(self) -> RowSummary:
        return RowSummary(self.sums, np.diff(self.indptr), self.fingerprints)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's mix of each entry (uint64 arithmetic wraps, as the hash intends)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class CalibrationPackage(eqx.Module):
    """What a build writes and a fit reads: ``matrix`` (targets x records) and its targets.

    ``targets`` has one row per matrix row with at least :data:`TARGET_COLUMNS`;
    ``target_names`` names the rows; ``initial_weights`` (optional) starts a fit;
    ``geography`` maps :data:`GEOGRAPHY_KEYS` to per-column arrays; ``metadata`` is
    JSON-serialisable provenance. The constructor checks that the parts agree.
    """

    matrix: sparse.csr_array
    targets: pd.DataFrame
    target_names: tuple[str, ...]
    initial_weights: np.ndarray | None = None
    geography: Mapping[str, np.ndarray] = eqx.field(default_factory=dict)
    metadata: Mapping[str, Any] = eqx.field(default_factory=dict)
    records: tuple[int, int] | None = None
    """A process's share of a multi-process fit (``load_package(..., records=(lo, hi))``): the
    matrix then holds only the nonzeros of columns ``lo <= c < hi``, and ``whole`` summarises
    the rows of the whole matrix. None: the matrix is whole."""
    whole: RowSummary | None = None

    def __check_init__(self) -> None:
        n_targets, n_records = _shape(self.matrix)
        missing = [c for c in TARGET_COLUMNS if c not in self.targets.columns]
        if missing:
            raise PackageError(f"the targets table lacks column(s) {', '.join(missing)}")
        if len(self.targets) != n_targets or len(self.target_names) != n_targets:
            raise PackageError(
                f"the matrix has {n_targets} rows but there are {len(self.targets)} targets "
                f"and {len(self.target_names)} target names"
            )
        values = self.targets["value"].to_numpy()
        if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
            raise PackageError("target values must be finite numbers")
        if self.initial_weights is not None:
            w = self.initial_weights
            if w.shape != (n_records,) or not np.isfinite(w).all() or (w < 0).any():
                raise PackageError(
                    f"initial_weights must be {n_records} finite non-negative numbers, got shape {w.shape}"
                )
        for key, column in self.geography.items():
            if key not in GEOGRAPHY_KEYS:
                raise PackageError(f"unknown geography {key!r}; expected one of {', '.join(GEOGRAPHY_KEYS)}")
            if column.shape != (n_records,):
                raise PackageError(f"geography {key!r} must have {n_records} entries, got shape {column.shape}")

    @classmethod
    def create(
        cls,
        matrix: Any,
        targets: pd.DataFrame,
        target_names: Any = None,
        *,
        initial_weights: Any = None,
        geography: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CalibrationPackage:
        """From a scipy sparse matrix or a ``jax.experimental.sparse.BCOO`` and a targets table.

        The matrix becomes CSR with int32 indices and float32 values; ``target_names``
        default to PolicyEngine's ``target_name`` column when the table has one.
        """
        import pandas as pd

        if target_names is None:
            if "target_name" not in targets.columns:
                raise PackageError("give target_names or a 'target_name' column")
            target_names = targets["target_name"]
        return cls(
            matrix=_as_csr(matrix),
            targets=pd.DataFrame(targets).reset_index(drop=True),
            target_names=tuple(str(name) for name in target_names),
            initial_weights=None if initial_weights is None else np.asarray(initial_weights, np.float64),
            geography={k: np.asarray(v) for k, v in (geography or {}).items()},
            metadata=dict(metadata or {}),
        )

    @property
    def n_targets(self) -> int:
        return _shape(self.matrix)[0]

    @property
    def n_records(self) -> int:
        return _shape(self.matrix)[1]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz) if self.whole is None else int(self.whole.nnz.sum())

    @property
    def target_values(self) -> np.ndarray:
        return self.targets["value"].to_numpy(np.float64)

    def target_matrix(self, *, layout: Layout = "interleaved") -> TargetMatrix:
        """The matrix in the engine's layout."""
        from .._matrix import TargetMatrix

        self._check_whole("target_matrix")
        return TargetMatrix.from_scipy(self.matrix, layout=layout)

    def to_bcoo(self) -> jsparse.BCOO:
        from jax.experimental import sparse as jsparse

        self._check_whole("to_bcoo")
        return jsparse.BCOO.from_scipy_sparse(self.matrix)

    def row_sums(self) -> np.ndarray:
        """``X @ 1`` in float64: a target whose row sums to 0 is impossible."""
        if self.whole is not None:
            return self.whole.sums
        return np.asarray(self.matrix.astype(np.float64).sum(axis=1)).ravel()

    def estimate(self, weights: Any) -> np.ndarray:
        """``X @ weights`` in float64. With a record range, every process adds its columns' share:
        each process of the run must call it."""
        weights = np.asarray(weights, np.float64)
        if weights.shape != (self.n_records,):
            raise ValueError(f"weights must have shape ({self.n_records},), got {weights.shape}")
        share = self.matrix.astype(np.float64) @ weights
        if self.records is None:
            return share
        from .._sharding import process_sum

        return process_sum(share)

    def _check_whole(self, what: str) -> None:
        if self.records is not None:
            lo, hi = self.records
            raise PackageError(f"{what} needs the whole matrix; this package holds only records {lo:,} to {hi:,}")

    def select_targets(self, keep: Any) -> CalibrationPackage:
        """The package with only the rows ``keep`` (a boolean mask or indices), in order."""
        rows = _as_indices(keep, self.n_targets)
        return eqx.tree_at(
            lambda p: (p.matrix, p.targets, p.target_names, p.whole),
            self,
            (
                self.matrix[rows],
                self.targets.iloc[rows].reset_index(drop=True),
                tuple(self.target_names[i] for i in rows),
                None if self.whole is None else self.whole.select(rows),
            ),
            is_leaf=lambda x: x is None,
        )

    def select_records(self, keep: Any) -> CalibrationPackage:
        """The package with only the columns ``keep`` (a boolean mask or indices), in order."""
        self._check_whole("select_records")
        cols = _as_indices(keep, self.n_records)
        return CalibrationPackage(
            matrix=_as_csr(self.matrix[:, cols]),
            targets=self.targets,
            target_names=self.target_names,
            initial_weights=None if self.initial_weights is None else self.initial_weights[cols],
            geography={k: v[cols] for k, v in self.geography.items()},
            metadata=dict(self.metadata) | {"parent_columns": int(self.n_records)},
        )

    def signature(self) -> dict[str, Any]:
        """What identifies the problem a fit solves: shape, the matrix's fingerprint (sha256 of
        :class:`RowSummary`'s per-row counts and hashes, which every process of a multi-process
        fit knows), and sha256 of names and values."""
        whole = self.whole if self.whole is not None else RowSummary.of(self.matrix)
        return {
            "shape": [self.n_targets, self.n_records],
            "matrix_fingerprint": sha256_arrays(whole.nnz, whole.fingerprints),
            "target_names_sha256": hashlib.sha256("\n".join(self.target_names).encode()).hexdigest(),
            "target_values_sha256": sha256_arrays(self.target_values),
        }


def save_package(package: CalibrationPackage, path: str | os.PathLike) -> pathlib.Path:
    """Write ``package`` to ``path`` (``.npz`` added when missing) atomically; return the path."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
        "matrix_indptr": package.matrix.indptr,
        "matrix_indices": package.matrix.indices.astype(np.int32),
        "matrix_data": package.matrix.data.astype(np.float32),
        "matrix_shape": np.array(package.matrix.shape, np.int64),
        "target_names": np.array(package.target_names, dtype=str),
        "metadata": np.array(json.dumps(json_safe(dict(package.metadata)), allow_nan=False)),
    }
    columns = []
    for name in package.targets.columns:
        column = package.targets[name]
        if column.dtype.kind in "biuf":
            arrays[f"targets/{name}"] = column.to_numpy()
        else:
            missing = column.isna().to_numpy()
            arrays[f"targets/{name}"] = np.where(missing, "", column.astype(str)).astype(str)
            arrays[f"targets_missing/{name}"] = missing
        columns.append(name)
    arrays["target_columns"] = np.array(columns, dtype=str)
    if package.initial_weights is not None:
        arrays["initial_weights"] = package.initial_weights
    for key, column in package.geography.items():
        arrays[f"geography/{key}"] = column
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_package(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    records: tuple[int, int] | Callable[[int], tuple[int, int]] | None = None,
) -> CalibrationPackage:
    """Read a package written by :func:`save_package`, or, with ``allow_pickle``, a PolicyEngine pickle.

    ``records=(lo, hi)`` (or a function of the matrix's column count that gives them) keeps
    only those columns' nonzeros (a process's share of a multi-process fit): the matrix is
    streamed ``_CHUNK`` nonzeros at a time, so memory is that share, and :class:`RowSummary`
    of the whole matrix is kept as ``whole``. Raises
    :class:`PackageError` (a ``ValueError``) for a missing, corrupt or inconsistent file, and
    for a pickle without ``allow_pickle``.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise PackageError(f"package not found: {path}")
    if records is not None and is_pickle(path):
        raise PackageError(f"{path} is a pickle: convert it with `jaxcal convert` to read a share of its records")
    if is_pickle(path):
        if not allow_pickle:
            raise PackageError(
                f"{path} is a pickle file, and loading a pickle runs whatever code it holds; "
                f"if you trust it, convert it once with `jaxcal convert {path} OUT.npz --allow-pickle`"
            )
        return import_pickle_package(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:  # all mean "not a package"
        raise PackageError(f"{path} is not a readable jaxcal package ({type(error).__name__}: {error})") from None
    with archive:
        try:
            marker = str(_member(archive, "format", "U", ()))
        except PackageError:
            marker = None
        if marker != FORMAT:
            raise PackageError(f"{path} is not a jaxcal package (no '{FORMAT}' marker)")
        try:
            version = int(_member(archive, "format_version", "iu", ()))
            if version > FORMAT_VERSION:
                raise PackageError(f"it has format version {version}; this jaxcal reads up to {FORMAT_VERSION}")
            return _read_package(archive, records)
        except PackageError as error:
            raise PackageError(f"{path}: {error}") from None
        except (KeyError, ValueError, TypeError) as error:
            raise PackageError(f"{path} is a damaged jaxcal package ({type(error).__name__}: {error})") from None


def _read_package(
    archive: zipfile.ZipFile, records: tuple[int, int] | Callable[[int], tuple[int, int]] | None = None
) -> CalibrationPackage:
    """The package ``archive`` holds (with ``records``, only those columns' nonzeros). Only a
    package's own arrays are read, each once its header fits the matrix's shape
    (:func:`_member`): a member no package has is never decompressed."""
    import pandas as pd
    from scipy import sparse

    n_targets, n_records = (int(s) for s in _member(archive, "matrix_shape", "iu", (2,)))
    if not (0 <= n_targets < _INDEX_LIMIT and 0 <= n_records < _INDEX_LIMIT):
        raise PackageError(f"the matrix shape {n_targets} x {n_records} exceeds the engine's int32 indices")
    indptr = _member(archive, "matrix_indptr", "iu", (n_targets + 1,))
    nnz = int(indptr[-1])
    if not 0 <= nnz <= n_targets * n_records:
        raise PackageError(f"the matrix declares {nnz:,} nonzeros in {n_targets:,} x {n_records:,} cells")
    whole = None
    if records is None:
        data = _member(archive, "matrix_data", "iuf", (nnz,))
        indices = _member(archive, "matrix_indices", "iu", (nnz,))
        matrix = sparse.csr_array((data, indices, indptr), shape=(n_targets, n_records))
    else:
        lo, hi = records(n_records) if callable(records) else records
        records = (lo, hi)
        if not 0 <= lo <= hi <= n_records:
            raise PackageError(f"records {lo} to {hi} are not a range of the matrix's {n_records:,} columns")
        matrix, whole = _read_record_range(archive, indptr, (n_targets, n_records), lo, hi)
    matrix.check_format(full_check=True)
    if not np.isfinite(matrix.data).all():
        raise PackageError("the matrix holds NaN or infinite values")
    names = set(archive.namelist())
    columns = _member(archive, "target_columns", "U", (len(_members_under(names, "targets/")),))
    targets = pd.DataFrame(
        {
            name: _restore_column(
                _member(archive, f"targets/{name}", "biufU", (n_targets,), of="targets"),
                _member(archive, f"targets_missing/{name}", "b", (n_targets,), of="targets")
                if f"targets_missing/{name}.npy" in names
                else None,
            )
            for name in columns
        }
    )
    metadata = json.loads(str(_member(archive, "metadata", "U", (), max_chars=_MAX_METADATA_CHARS)))
    if not isinstance(metadata, dict):
        raise PackageError(f"the metadata must be a JSON object, got {type(metadata).__name__}")
    return CalibrationPackage(
        matrix=matrix,
        targets=targets,
        target_names=tuple(str(n) for n in _member(archive, "target_names", "U", (n_targets,), of="targets")),
        initial_weights=_member(archive, "initial_weights", "iuf", (n_records,), of="records")
        if "initial_weights.npy" in names
        else None,
        geography={
            key: _member(archive, f"geography/{key}", "iuU", (n_records,), of="records")
            for key in _members_under(names, "geography/")
        },
        metadata=metadata,
        records=records,
        whole=whole,
    )


def _read_record_range(
    archive: zipfile.ZipFile, indptr: np.ndarray, shape: tuple[int, int], lo: int, hi: int
) -> tuple[sparse.csr_array, RowSummary]:
    """The matrix's nonzeros in columns ``lo <= c < hi`` and the whole matrix's row summary,
    streamed from the archive ``_CHUNK`` nonzeros at a time."""
    from scipy import sparse

    nnz = int(indptr[-1])
    # A first pass counts this range's nonzeros, so the second fills arrays of that size in place.
    size = sum(
        int(((cols >= lo) & (cols < hi)).sum()) for cols in _member_chunks(archive, "matrix_indices", "iu", (nnz,))
    )
    summary = _RowAccumulator(indptr)
    per_row = np.zeros(shape[0], np.int64)
    kept_cols, kept_values, filled = np.empty(size, np.int32), np.empty(size, np.float32), 0
    indices = _member_chunks(archive, "matrix_indices", "iu", (nnz,))
    data = _member_chunks(archive, "matrix_data", "iuf", (nnz,))
    for start, (cols, values) in zip(range(0, nnz, _CHUNK), zip(indices, data)):
        if cols.size and (cols.min() < 0 or cols.max() >= shape[1]):
            raise PackageError(f"the matrix has column indices outside 0 to {shape[1] - 1}")
        rows = summary.rows(start, cols.size)
        summary.add(start, cols, values, rows)
        mine = (cols >= lo) & (cols < hi)
        count = int(mine.sum())
        per_row += np.bincount(rows[mine], minlength=shape[0])
        kept_cols[filled : filled + count] = cols[mine]
        kept_values[filled : filled + count] = values[mine]
        filled += count
    # indptr of the indices' int32 (scipy would otherwise widen the indices to match it)
    local_indptr = np.r_[0, np.cumsum(per_row)].astype(np.int32 if size < _INDEX_LIMIT else np.int64)
    matrix = sparse.csr_array((kept_values, kept_cols, local_indptr), shape=shape)
    return matrix, summary.result()


Shape = tuple[int | None, ...]
"""An array's expected shape; a None length is any length under the engine's int32 limit."""


def _member(
    archive: zipfile.ZipFile,
    name: str,
    kinds: str,
    shape: Shape | list[Shape],
    *,
    of: str | None = None,
    max_chars: int = _MAX_CHARS,
) -> np.ndarray:
    """The array ``name`` of ``archive``, decompressed only once its ``.npy`` header declares a dtype
    of one of ``kinds`` (text at most ``max_chars`` long) and ``shape`` (one of them, given a list;
    one entry per matrix row or column, when ``of`` says which), and the archive declares the size
    that implies: a damaged or hostile member costs no more than the package's shape allows.
    Checkpoints read their members with it too (:func:`jaxcal.io.load_checkpoint`)."""
    info, _, _, _ = _member_header(archive, name, kinds, shape, of=of, max_chars=max_chars)
    with _unreadable(name), archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _member_chunks(archive: zipfile.ZipFile, name: str, kinds: str, shape: Shape) -> Iterator[np.ndarray]:
    """The one-dimensional array ``name`` of ``archive``, ``_CHUNK`` entries at a time, checked as
    :func:`_member` checks it."""
    info, header_size, dtype, declared = _member_header(archive, name, kinds, shape)
    with _unreadable(name), archive.open(info) as f:
        f.read(header_size)
        for start in range(0, declared[0], _CHUNK):
            count = min(_CHUNK, declared[0] - start)
            block = f.read(count * dtype.itemsize)
            if len(block) != count * dtype.itemsize:
                raise EOFError("the member ends early")
            yield np.frombuffer(block, dtype)


@contextlib.contextmanager
def _unreadable(name: str) -> Iterator[None]:
    """A damaged member's read errors as one :class:`PackageError` naming it."""
    try:
        yield
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise PackageError(f"the array {name!r} is unreadable ({type(error).__name__}: {error})") from None


def _member_header(
    archive: zipfile.ZipFile,
    name: str,
    kinds: str,
    shape: Shape | list[Shape],
    *,
    of: str | None = None,
    max_chars: int = _MAX_CHARS,
) -> tuple[zipfile.ZipInfo, int, np.dtype, tuple[int, ...]]:
    """``name``'s entry, header size, dtype and shape, once :func:`_member`'s checks pass."""
    shapes = shape if isinstance(shape, list) else [shape]
    try:
        info = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise PackageError(f"the array {name!r} is missing") from None
    with _unreadable(name), archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        declared, _, dtype = read_header(f)
        header_size = f.tell()
    if dtype.kind not in kinds:
        raise PackageError(f"the array {name!r} must hold {_KIND_NAMES[kinds]}, got {dtype}")
    if dtype.kind == "U" and dtype.itemsize > 4 * max_chars:
        raise PackageError(f"the array {name!r} holds text of {dtype.itemsize // 4:,} characters, over {max_chars:,}")
    if not any(_fits(declared, expected) for expected in shapes):
        why = f", as the matrix has {shapes[0][0]:,} {of}" if of else ""
        wanted = " or ".join(str(expected).replace("None", "N") for expected in shapes)
        raise PackageError(f"the array {name!r} must have shape {wanted}{why}, got {declared}")
    if info.file_size != header_size + dtype.itemsize * math.prod(declared):
        raise PackageError(f"the array {name!r} is {info.file_size:,} bytes, not the size its header declares")
    return info, header_size, dtype, tuple(declared)


def _fits(declared: tuple[int, ...], shape: Shape) -> bool:
    return len(declared) == len(shape) and all(
        d == s if s is not None else 0 <= d < _INDEX_LIMIT for d, s in zip(declared, shape)
    )


def _members_under(names: set[str], prefix: str) -> list[str]:
    """The arrays named ``prefix<key>.npy`` among ``names``: their keys."""
    return sorted(n[len(prefix) : -len(".npy")] for n in names if n.startswith(prefix) and n.endswith(".npy"))


def import_pickle_package(path: str | os.PathLike) -> CalibrationPackage:
    """Import PolicyEngine's pickle package (``X_sparse``, ``targets_df``, ``target_names``,
    ``metadata``, optional ``initial_weights``, ``cd_geoid``, ``block_geoid``).

    Each column's ``state_fips`` is derived from its block, else its district (see
    :func:`policyengine_state_fips`), for the commands that work by state. When stage 2's
    contract lies beside the file it is checked against it (:func:`check_stage_contract`) and its
    key facts kept as ``metadata["stage_contract"]``. Unpickling runs code from the file: call
    this only on files you trust.
    """
    import pickle

    from ._contract import check_stage_contract, policyengine_state_fips

    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)  # noqa: S301 - the caller opted in
    except Exception as error:
        raise PackageError(f"{path} could not be unpickled ({type(error).__name__}: {error})") from None
    if not isinstance(raw, dict) or not {"X_sparse", "targets_df"} <= raw.keys():
        raise PackageError(f"{path} is not a PolicyEngine calibration package (a dict with X_sparse and targets_df)")
    # GEOIDs as text, as PolicyEngine hashes them; its blocks come as an object array, which .npz cannot hold
    geography = {k: np.asarray(raw[k], dtype=str) for k in ("cd_geoid", "block_geoid") if raw.get(k) is not None}
    metadata = dict(raw.get("metadata") or {}) | {"imported_from": str(path)}
    try:
        states = policyengine_state_fips(geography.get("block_geoid"), geography.get("cd_geoid"))
        contract = check_stage_contract(path, raw)
    except PackageError as error:
        raise PackageError(f"{path}: {error}") from None
    if states is not None:
        geography["state_fips"] = states
    if contract is not None:
        metadata["stage_contract"] = contract
    return CalibrationPackage.create(
        raw["X_sparse"],
        raw["targets_df"],
        raw.get("target_names"),
        initial_weights=raw.get("initial_weights"),
        geography=geography,
        metadata=metadata,
    )


def is_pickle(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a pickle (protocol 2 or later) or is named ``.pkl``/``.pickle``."""
    path = pathlib.Path(path)
    if path.suffix in (".pkl", ".pickle"):
        return True
    with open(path, "rb") as f:
        return f.read(1) == _PICKLE_MAGIC


def _shape(matrix: Any) -> tuple[int, int]:
    """A sparse matrix's (rows, columns); scipy's stubs allow None."""
    rows, columns = matrix.shape
    return int(rows), int(columns)


def _as_csr(matrix: Any) -> sparse.csr_array:
    from scipy import sparse

    if not sparse.issparse(matrix):
        from jax.experimental import sparse as jsparse

        if not isinstance(matrix, jsparse.BCOO):
            raise PackageError(f"the matrix must be scipy sparse or a BCOO, got {type(matrix).__name__}")
        matrix = _bcoo_to_scipy(matrix)
    csr = sparse.csr_array(matrix, dtype=np.float32)
    csr.sum_duplicates()
    if csr.nnz < 2**31:  # the engine's int32 indices; scipy keeps indptr and indices of one dtype
        csr.indptr = csr.indptr.astype(np.int32, copy=False)
        csr.indices = csr.indices.astype(np.int32, copy=False)
    if not np.isfinite(csr.data).all():
        raise PackageError("the matrix holds NaN or infinite values")
    return csr


def _bcoo_to_scipy(matrix: jsparse.BCOO) -> sparse.coo_array:
    from scipy import sparse

    indices = np.asarray(matrix.indices)
    data = np.asarray(matrix.data)
    real = (indices[:, 0] < matrix.shape[0]) & (indices[:, 1] < matrix.shape[1])  # drop BCOO padding
    return sparse.coo_array((data[real], (indices[real, 0], indices[real, 1])), shape=matrix.shape)


def _as_indices(keep: Any, size: int) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if keep.shape != (size,):
            raise ValueError(f"a boolean selection must have {size} entries, got shape {keep.shape}")
        return np.flatnonzero(keep)
    if keep.size and (keep.min() < 0 or keep.max() >= size):
        raise ValueError(f"selected indices must lie in [0, {size})")
    return keep.astype(np.int64)


def _restore_column(values: np.ndarray, missing: np.ndarray | None) -> Any:
    if missing is None:
        return values
    column = values.astype(object)
    column[missing] = None
    return column
