"""Checkpoints: everything a fit needs to continue exactly, and what problem it belongs to.

A checkpoint holds the parameters, the optimizer state, the PRNG key and the epochs done,
so that resuming gives bitwise the weights of a fit that never stopped; and a signature
(matrix shape and sha256 of the matrix, target names and target values) plus the
hyperparameters, so that a checkpoint is not continued on another problem by mistake.
One ``.npz`` file, read without pickle, written atomically.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from .._model import CalibrationWeights
from ._files import atomic_write
from ._package import PackageError

FORMAT = "jaxcal-checkpoint"
FORMAT_VERSION = 1
_GATE_FIELDS = ("beta", "gamma", "zeta", "use_gates")


class Checkpoint(eqx.Module):
    """A fit stopped after ``epochs`` epochs, ready to continue with ``fit(model, ...,
    key=key, opt_state=restore_opt_state(...), start_epoch=epochs)``."""

    model: CalibrationWeights
    opt_state_leaves: tuple[np.ndarray, ...]
    key: PRNGKeyArray
    epochs: int
    signature: dict[str, Any]
    hyperparameters: dict[str, Any]

    def opt_state(self, optimizer: optax.GradientTransformation) -> optax.OptState:
        """The optimizer state, in the structure ``optimizer.init`` gives for this model."""
        template = optimizer.init(eqx.filter(self.model, eqx.is_array))
        leaves, treedef = jax.tree.flatten(template)
        if len(leaves) != len(self.opt_state_leaves) or any(
            np.shape(a) != np.shape(b) for a, b in zip(leaves, self.opt_state_leaves)
        ):
            raise ValueError("the checkpoint's optimizer state does not fit this optimizer")
        return jax.tree.unflatten(
            treedef, [jnp.asarray(saved, jnp.asarray(t).dtype) for saved, t in zip(self.opt_state_leaves, leaves)]
        )


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    key: PRNGKeyArray,
    epochs: int,
    signature: dict[str, Any],
    hyperparameters: dict[str, Any],
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
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint; ``PackageError`` (a ``ValueError``) if it is missing or not one."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PackageError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = dict(npz.items())
        if str(files.get("format", "")) != FORMAT:
            raise PackageError(f"{path} is not a jaxcal checkpoint")
        model = CalibrationWeights(
            jnp.asarray(files["log_weight"]), jnp.asarray(files["log_alpha"]), **json.loads(str(files["gates"]))
        )
        return Checkpoint(
            model=model,
            opt_state_leaves=tuple(files[k] for k in sorted(k for k in files if k.startswith("opt_state/"))),
            key=jax.random.wrap_key_data(files["key_data"], impl=str(files["key_impl"])),
            epochs=int(files["epochs"]),
            signature=json.loads(str(files["signature"])),
            hyperparameters=json.loads(str(files["hyperparameters"])),
        )
    except PackageError:
        raise
    except Exception as error:  # a damaged zip, a missing entry, bad JSON: all "not readable"
        raise PackageError(f"{path} is not a readable jaxcal checkpoint ({type(error).__name__}: {error})") from None


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two problem signatures, one phrase per field (empty: same problem)."""
    return [
        f"{name} ({saved.get(name)} in the checkpoint, {current.get(name)} now)"
        if name == "shape"
        else name.replace("_sha256", "")
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]
