"""Files written whole or not at all (and durably), run directories one writer at a time, content
hashes, and plain JSON."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

import numpy as np


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Any], None],
    mode: str = "wb",
    verify: Callable[[pathlib.Path], None] | None = None,
) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a failed write leaves no trace. The temporary
    name is this writer's own, and the file is synced before the rename (and its directory
    after), so that a crash leaves the old file or the whole new one. ``verify``, given the
    written temporary file, may raise to keep it from ``path``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, temporary = temporary_file(path, ".tmp", mode)
    try:
        with f:
            write(f)
            sync(f)
        if verify is not None:
            verify(temporary)
        commit(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def temporary_file(path: pathlib.Path, suffix: str, mode: str = "wb") -> tuple[IO[Any], pathlib.Path]:
    """An open file beside ``path`` whose hidden name (ending ``suffix``) is unique to this writer,
    for :func:`commit` to rename into place: two writers of one file never write into one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    return os.fdopen(fd, mode), pathlib.Path(temporary)


def sync(f: IO[Any]) -> None:
    """Flush ``f`` to disk."""
    f.flush()
    os.fsync(f.fileno())


def commit(temporary: pathlib.Path, path: pathlib.Path) -> None:
    """Rename the synced ``temporary`` to ``path`` and sync the directory, so that the rename lasts."""
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    os.replace(temporary, path)
    _sync_directory(path.parent)


@contextlib.contextmanager
def run_dir_lock(directory: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold ``directory`` (created if need be) for one run: a second run that asks for it while
    this one holds it is a ``ValueError``. The lock is the directory's own (``flock``), so that no
    file is left behind and a run that dies releases it; where the file system has no locks
    (a warning), the run goes on unguarded."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another jaxcal run is writing to {directory}; wait for it to end or choose another --output"
            ) from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            warnings.warn(f"cannot lock {directory} ({error.strerror}): no other run must write to it", stacklevel=3)
        yield directory
    finally:
        os.close(fd)  # releases the lock


_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
"""What ``flock`` fails with on a file system without locks (some network and parallel ones)."""


def _sync_directory(directory: pathlib.Path) -> None:
    """Make a rename in ``directory`` durable (where the file system lets a directory be synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(directory: str | os.PathLike) -> None:
    """That ``directory`` exists and is writable, or could be created: nothing is created here."""
    existing = pathlib.Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot create the output directory {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == pathlib.Path(directory):
            raise ValueError(f"the output directory {directory} is not writable")
        raise ValueError(f"cannot create the output directory {directory}: {existing} is not writable")


def load_weights(path: str | os.PathLike, n_records: int, *, flag: str, kind: str = "a weights .npy") -> np.ndarray:
    """The weights ``.npy`` at ``path``, as float64: ``n_records`` finite non-negative numbers, else
    a ``ValueError`` naming ``flag`` (``kind`` says what else the file could have been)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{flag}: {path} not found")
    try:
        weights = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{flag}: {path} is not {kind} ({error})") from None
    if not isinstance(weights, np.ndarray) or weights.dtype.kind not in "iuf":
        found = weights.dtype if isinstance(weights, np.ndarray) else "an .npz archive"
        raise ValueError(f"{flag}: {path} must hold {n_records} numbers (weights), got {found}")
    if weights.shape != (n_records,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"{flag}: {path} must hold {n_records} finite non-negative weights (one per record), "
            f"got shape {weights.shape}"
        )
    return weights.astype(np.float64)


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` that refuses aliases: a few lines of them can expand past any memory (the
    billion laughs), and no configuration jaxcal reads needs one (a ``yaml.YAMLError`` then)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.MarkedYAMLError(
                    None, None, f"found the alias *{event.anchor}: none is allowed", event.start_mark
                )
            return super().compose_node(parent, index)

    return yaml.load(stream, NoAliasLoader)  # noqa: S506 - a SafeLoader


def json_safe(value: Any) -> Any:
    """Plain JSON: mappings as dicts, numpy arrays and sets as lists (sets in a fixed order), numpy
    scalars as Python ones, dates and times as ISO 8601 text, paths as text, NaN and infinities as
    null."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, set | frozenset):
        value = sorted(value, key=repr)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def file_provenance(role: str, path: str | os.PathLike | None) -> dict[str, str | None]:
    """``{role}_path`` (absolute) and ``{role}_sha256`` of an input file: the one provenance
    schema of packages (``dataset``, ``db``, ``target_config``) and run records (``package``).
    Both are None when there is no file."""
    if path is None:
        return {f"{role}_path": None, f"{role}_sha256": None}
    return {f"{role}_path": str(pathlib.Path(path).resolve()), f"{role}_sha256": sha256_file(path)}


def check_inputs_spared(outputs: Iterable[str | os.PathLike], inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """``ValueError`` naming the flag when a file a command would write is one of the files it reads
    (the same path, or the same file through a link): no command overwrites its own input."""
    written = [pathlib.Path(path) for path in outputs]
    for flag, source in inputs.items():
        if source is None:
            continue
        source = pathlib.Path(source)
        for target in written:
            if _same_file(source, target):
                raise ValueError(f"{target} would be overwritten, but it is the {flag} this command reads")


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False
