"""The run record: one schema of ``unified_run_config.json`` for ``fit``, ``derive`` and ``sweep`` alike."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, final

import equinox as eqx

from ..io import atomic_write, json_safe, sha256_file
from ..workflow import error_summary, weight_health
from ._names import RUN_CONFIG

if TYPE_CHECKING:
    import pandas as pd

    from ..io import CalibrationPackage

VERSIONED_PACKAGES = ("jaxcal", "jax", "jaxlib", "equinox", "optax", "numpy", "scipy")


@final
class RunRecord(eqx.Module):
    """What a run directory holds and how it was made; ``jaxcal gates`` checks a directory by it.

    Every command fills the fields it has and leaves the others None: a sweep, which keeps no
    single weight vector, has no weight or error fields. ``inputs`` is the input files'
    provenance (``{role}_path`` and ``{role}_sha256``, the schema packages use for their
    dataset and database, see :func:`jaxcal.io.file_provenance`); ``artifacts`` maps the name of
    each file the run wrote into its directory to its sha256. A record read from an older or
    hand-written file has None (or empty) wherever that file says nothing.
    """

    command: str | None = None
    """``fit``, ``derive`` or ``sweep``."""
    product: str | None = None
    """The artifact's name for gates, e.g. ``mp-300k``."""
    package: str | None = None
    """The package path as given."""
    inputs: Mapping[str, Any] = eqx.field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = eqx.field(default_factory=dict)
    package_signature: Mapping[str, Any] | None = None
    """``CalibrationPackage.signature()`` of the problem the weights solve (a tier's: the child's)."""
    n_targets: int | None = None
    n_records: int | None = None
    epochs_completed: int | None = None
    final_loss: float | None = None
    """The objective of the last epoch run."""
    weights_file: str | None = None
    weight_sum: float | None = None
    weight_nonzero: int | None = None
    mean_error_pct: float | None = None
    median_error_pct: float | None = None
    share_within_10pct: float | None = None
    weight_health: Mapping[str, Any] | None = None
    holdout: Mapping[str, Any] | None = None
    """The held-out split and, for a fit, its best epoch and losses."""
    tier: Mapping[str, Any] | None = None
    """A derived tier's budget, state floor and chosen lambda_l0."""
    elapsed_seconds: float | None = None
    artifacts: Mapping[str, Any] = eqx.field(default_factory=dict)
    versions: Mapping[str, str] = eqx.field(default_factory=dict)
    jaxcal_version: str | None = None

    @classmethod
    def create(
        cls,
        command: str,
        directory: str | os.PathLike,
        artifacts: Sequence[str],
        *,
        problem: CalibrationPackage,
        weights: Any = None,
        diagnostics: pd.DataFrame | None = None,
        **fields: Any,
    ) -> RunRecord:
        """The record of a run of ``command`` on ``problem`` (the package its weights solve) that
        wrote the files ``artifacts`` (names in ``directory``, hashed now); with ``weights`` and
        their ``diagnostics`` table, the weight health and error summary; ``fields`` fill the rest."""
        directory = pathlib.Path(directory)
        measured: dict[str, Any] = {}
        if weights is not None:
            health = weight_health(weights)
            measured = {
                "weight_sum": health["total"],
                "weight_nonzero": health["count_positive"],
                "weight_health": health,
            }
        if diagnostics is not None:
            measured |= error_summary(diagnostics["rel_error"])
        versions = _versions()
        return cls(
            command=command,
            n_targets=problem.n_targets,
            n_records=problem.n_records,
            artifacts={name: sha256_file(directory / name) for name in artifacts},
            versions=versions,
            jaxcal_version=versions.get("jaxcal"),
            **measured,
            **fields,
        )

    @classmethod
    def read(cls, directory: str | os.PathLike) -> RunRecord:
        """The record in ``directory`` (empty when it has none); keys outside the schema are ignored."""
        path = pathlib.Path(directory) / RUN_CONFIG
        saved = json.loads(path.read_text()) if path.is_file() else {}
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if saved.get(f.name) is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN and infinities as null)."""
        return json_safe({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def write(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write ``unified_run_config.json`` into ``directory``, atomically; return its path."""
        path = pathlib.Path(directory) / RUN_CONFIG
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        atomic_write(path, lambda f: f.write(text), mode="w")
        return path


def _versions() -> dict[str, str]:
    """The one versions block of every run record: Python and the installed packages that ran it."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
