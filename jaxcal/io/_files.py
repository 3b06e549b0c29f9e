"""Files written whole or not at all, content hashes, and plain JSON."""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a failed write leaves no trace.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


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


def json_safe(value: Any) -> Any:
    """Plain JSON: mappings as dicts, numpy arrays as lists and scalars as Python numbers, NaN and
    infinities as null."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
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
