"""Checkpoints: everything a fit needs to continue exactly, and what problem it belongs to.

A checkpoint holds the parameters, the optimizer state, the PRNG key and the epochs done,
so that resuming gives bitwise the weights of a fit that never stopped; and a signature
(matrix shape and sha256 of the matrix, target names and target values) plus the
hyperparameters, so that a checkpoint is not continued on another problem by mistake.
One ``.npz`` file, read without pickle, written atomically.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import zipfile
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from .._model import CalibrationWeights
from ._files import atomic_write
from ._package import PackageError, Shape
from ._package import _member as _npy_member

FORMAT = "jaxcal-checkpoint"
FORMAT_VERSION = 2
"""2 added a held-out fit's progress (``holdout/...``); a version 1 checkpoint still loads."""
_GATE_FIELDS = ("beta", "gamma", "zeta", "use_gates")


class HoldoutState(eqx.Module):
    """A held-out fit's progress: its evaluations so far (the rows of its held-out log) and the
    best one's fit (parameters, optimizer state, epochs done), so that a resumed fit keeps the
    best weights and stops where the fit that never stopped would (the patience counts from
    ``best_epochs``)."""

    log: tuple[dict[str, float], ...]
    best_model: CalibrationWeights
    best_opt_state_leaves: tuple[np.ndarray, ...]
    best_epochs: int

    def best_opt_state(self, optimizer: optax.GradientTransformation) -> optax.OptState:
        """The best evaluation's optimizer state, as :meth:`Checkpoint.opt_state`."""
        return _restore_opt_state(self.best_model, self.best_opt_state_leaves, optimizer)


class Checkpoint(eqx.Module):
    """A fit stopped after ``epochs`` epochs, ready to continue with ``fit(model, ...,
    key=key, opt_state=restore_opt_state(...), start_epoch=epochs)``; ``holdout``: a held-out
    fit's progress (None for other fits)."""

    model: CalibrationWeights
    opt_state_leaves: tuple[np.ndarray, ...]
    key: PRNGKeyArray
    epochs: int
    signature: dict[str, Any]
    hyperparameters: dict[str, Any]
    holdout: HoldoutState | None = None

    def opt_state(self, optimizer: optax.GradientTransformation) -> optax.OptState:
        """The optimizer state, in the structure ``optimizer.init`` gives for this model."""
        return _restore_opt_state(self.model, self.opt_state_leaves, optimizer)


def _restore_opt_state(
    model: CalibrationWeights, saved: tuple[np.ndarray, ...], optimizer: optax.GradientTransformation
) -> optax.OptState:
    template = optimizer.init(eqx.filter(model, eqx.is_array))
    leaves, treedef = jax.tree.flatten(template)
    if len(leaves) != len(saved) or any(
        np.shape(a) != np.shape(b) or b.dtype.kind != jnp.asarray(a).dtype.kind for a, b in zip(leaves, saved)
    ):
        raise ValueError("the checkpoint's optimizer state does not fit this optimizer")
    return jax.tree.unflatten(treedef, [jnp.asarray(b, jnp.asarray(a).dtype) for a, b in zip(leaves, saved)])


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    key: PRNGKeyArray,
    epochs: int,
    signature: dict[str, Any],
    hyperparameters: dict[str, Any],
    holdout: HoldoutState | None = None,
) -> pathlib.Path:
    """Write a checkpoint atomically (a temporary file renamed into place); return its path."""
    path = pathlib.Path(path)
    arrays = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
        "log_weight": np.asarray(model.log_weight),
        "log_alpha": np.asarray(model.log_alpha),
        "gates": np.array(json.dumps({f: getattr(model, f) for f in _GATE_FIELDS})),
        "key_data": np.asarray(jax.random.key_data(key)),
        "key_impl": np.array(str(jax.random.key_impl(key))),
        "epochs": np.array(epochs, np.int64),
        "signature": np.array(json.dumps(signature)),
        "hyperparameters": np.array(json.dumps(hyperparameters)),
    }
    for i, leaf in enumerate(jax.tree.leaves(opt_state)):
        arrays[f"opt_state/{i:04d}"] = np.asarray(leaf)
    if holdout is not None:
        arrays |= {
            "holdout/log": np.array(json.dumps(list(holdout.log))),
            "holdout/best_log_weight": np.asarray(holdout.best_model.log_weight),
            "holdout/best_log_alpha": np.asarray(holdout.best_model.log_alpha),
            "holdout/best_epochs": np.array(holdout.best_epochs, np.int64),
        }
        for i, leaf in enumerate(holdout.best_opt_state_leaves):
            arrays[f"holdout/best_opt_state/{i:04d}"] = np.asarray(leaf)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint and check that it can be resumed; ``PackageError`` (a ``ValueError``) if it
    is missing, not one, damaged, or holds what no fit writes: members of the wrong type or
    shape, or non-finite parameters or optimizer state (a diverged fit's).

    As a package, member by member: each of a checkpoint's own arrays is decompressed only once
    its header fits (the package reader's ``_member``), and a member no checkpoint has never is."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PackageError(f"checkpoint not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:  # all mean "not a checkpoint"
        raise PackageError(f"{path} is not a readable jaxcal checkpoint ({type(error).__name__}: {error})") from None
    with archive:
        files = _Members(archive)
        try:
            marker = files.text("format") if "format" in files else None
        except _Unfit:
            marker = None
        if marker != FORMAT:
            raise PackageError(f"{path} is not a jaxcal checkpoint")
        try:
            return _checkpoint(files)
        except _Unfit as error:
            raise PackageError(f"the checkpoint {path} cannot be resumed: {error}") from None


class _Unfit(Exception):
    """What is wrong with a checkpoint's members."""


class _Members:
    """A checkpoint's ``.npy`` members, each read when asked for, with the dtype and shape asked."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.names = {n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")}

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str, kinds: str, shape: Shape | list[Shape], *, max_chars: int = 4096) -> np.ndarray:
        if name not in self.names:
            raise _Unfit(f"it has no {name}")
        try:
            return _npy_member(self.archive, name, kinds, shape, max_chars=max_chars)
        except PackageError as error:
            raise _Unfit(str(error)) from None

    def text(self, name: str, *, max_chars: int = 4096) -> str:
        return str(self.read(name, "U", (), max_chars=max_chars))

    def under(self, prefix: str) -> list[str]:
        return sorted(name for name in self.names if name.startswith(prefix))


_MAX_JSON_CHARS = 1 << 24
"""The longest JSON member (a long held-out log)."""
_KEY_SHAPES: list[Shape] = [(2,), (4,)]
"""The shapes of one PRNG key's data: threefry's 2 words, rbg's 4."""


def _checkpoint(files: _Members) -> Checkpoint:
    version = _count(files, "format_version")
    if not 1 <= version <= FORMAT_VERSION:
        raise _Unfit(f"its format version is {version}; this jaxcal reads versions 1 to {FORMAT_VERSION}")
    gates = _json(files, "gates")
    if set(gates) != set(_GATE_FIELDS):
        raise _Unfit(f"gates must give {', '.join(_GATE_FIELDS)}, got {sorted(gates)}")
    beta, gamma, zeta, use_gates = (gates[f] for f in _GATE_FIELDS)
    if not (_finite(beta) and _finite(gamma) and _finite(zeta) and beta > 0 and gamma < 0 < 1 < zeta):
        raise _Unfit(f"its gates need beta > 0 and gamma < 0 < 1 < zeta, got {gates}")
    if not isinstance(use_gates, bool):
        raise _Unfit(f"its gates' use_gates must be true or false, got {use_gates!r}")
    n_records = len(_parameters(files, "log_weight"))  # the length every other per-record array has

    def model(prefix: str) -> CalibrationWeights:
        log_weight = _parameters(files, f"{prefix}log_weight", n_records)
        log_alpha = _parameters(files, f"{prefix}log_alpha", n_records)
        return CalibrationWeights(jnp.asarray(log_weight, jnp.float32), jnp.asarray(log_alpha, jnp.float32), **gates)

    epochs = _count(files, "epochs")
    key_data, impl = files.read("key_data", "iu", _KEY_SHAPES), files.text("key_impl")
    try:
        key = jax.random.wrap_key_data(jnp.asarray(key_data), impl=impl)
    except (ValueError, TypeError):
        key = None
    if key is None or key.shape != ():
        raise _Unfit(f"key_data must be one {impl} key, got a {key_data.dtype} array of shape {key_data.shape}")
    holdout = None
    if files.under("holdout/"):
        log = _json(files, "holdout/log", list)
        if not all(isinstance(row, dict) and all(_is_number(v) for v in row.values()) for row in log):
            raise _Unfit("holdout/log must be a list of rows of numbers")
        best_epochs = _count(files, "holdout/best_epochs")
        if not best_epochs <= epochs or best_epochs not in [row.get("epoch") for row in log]:
            raise _Unfit(f"its best held-out epoch {best_epochs} is not one of its evaluations")
        holdout = HoldoutState(
            log=tuple(log),
            best_model=model("holdout/best_"),
            best_opt_state_leaves=_opt_state(files, "holdout/best_opt_state/", n_records),
            best_epochs=best_epochs,
        )
    return Checkpoint(
        model=model(""),
        opt_state_leaves=_opt_state(files, "opt_state/", n_records),
        key=key,
        epochs=epochs,
        signature=_json(files, "signature"),
        hyperparameters=_json(files, "hyperparameters"),
        holdout=holdout,
    )


def _json(files: _Members, name: str, kind: type = dict) -> Any:
    try:
        value = json.loads(files.text(name, max_chars=_MAX_JSON_CHARS))
    except (json.JSONDecodeError, RecursionError) as error:  # RecursionError: nested too deep
        raise _Unfit(f"{name} is not JSON ({type(error).__name__}: {error})") from None
    if not isinstance(value, kind):
        raise _Unfit(f"{name} must be a JSON {'object' if kind is dict else 'array'}, got {type(value).__name__}")
    return value


def _count(files: _Members, name: str) -> int:
    value = files.read(name, "iu", ())
    if value < 0:
        raise _Unfit(f"{name} must be a non-negative whole number, got {value!r}")
    return int(value)


def _parameters(files: _Members, name: str, length: int | None = None) -> np.ndarray:
    value = files.read(name, "f", (length,))
    _check_finite(name, value)
    return value


def _opt_state(files: _Members, prefix: str, n_records: int) -> tuple[np.ndarray, ...]:
    """The optimizer state's leaves: numbers, each a scalar or one per record."""
    leaves = tuple(files.read(name, "iuf", [(), (n_records,)]) for name in files.under(prefix))
    for name, leaf in zip(files.under(prefix), leaves):
        _check_finite(f"{name} (optimizer state)", leaf)
    return leaves


def _check_finite(name: str, value: np.ndarray) -> None:
    bad = int(value.size - np.isfinite(value).sum())
    if bad:
        raise _Unfit(f"{name} holds {bad:,} non-finite value(s) (NaN or infinity), as a diverged fit leaves")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two problem signatures, one phrase per field (empty: same problem)."""
    return [
        f"{name} ({saved.get(name)} in the checkpoint, {current.get(name)} now)"
        if name == "shape"
        else name.replace("_sha256", "")
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]
