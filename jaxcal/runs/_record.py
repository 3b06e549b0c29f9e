"""The run record: one schema of ``unified_run_config.json`` for ``fit``, ``derive`` and ``sweep`` alike,
a superset of policyengine-us-data's."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import numpy as np

from ..io import atomic_write, json_safe, sha256_file
from ..workflow import error_summary, errors_by_level, weight_health
from ._names import RUN_CONFIG

if TYPE_CHECKING:
    import pandas as pd

    from ..io import CalibrationPackage

VERSIONED_PACKAGES = ("jaxcal", "jax", "jaxlib", "equinox", "optax", "numpy", "scipy")
PE_HYPERPARAMETERS = ("lambda_l0", "beta", "lambda_l2", "learning_rate", "epochs", "seed")
"""The hyperparameters policyengine-us-data's run config has at its top level."""
SOURCE_DIRECTORY = pathlib.Path(__file__).resolve().parents[2]


@final
class RunRecord(eqx.Module):
    """What a run directory holds and how it was made; ``jaxcal gates`` checks a directory by it.

    Every command fills the fields it has and leaves the others None: a sweep, which keeps no
    single weight vector, has no weight or error fields. ``inputs`` is the input files'
    provenance (``{role}_path`` and ``{role}_sha256``, the schema packages use for their
    dataset and database, see :func:`jaxcal.io.file_provenance`); ``artifacts`` maps the name of
    each file the run wrote into its directory to ``sha256:<hex>``. A record read from an older
    or hand-written file has None (or empty) wherever that file says nothing.

    Every key of policyengine-us-data's ``unified_run_config.json`` is here at its top level
    with its meaning; where PolicyEngine records a command-line default that the run did not
    use (``dataset``, ``db_path``, ``n_clones`` of a fit from a package), this record has the
    package's own. The errors are over the achievable targets (a row that is not all zeros), as
    PolicyEngine's, that the fit fitted; ``hyperparameters`` holds jaxcal's fuller account of the settings.
    """

    command: str | None = None
    """``fit``, ``derive`` or ``sweep``."""
    dataset: str | None = None
    """The microdata the package was built from (its metadata's ``dataset_path``)."""
    db_path: str | None = None
    """The target database the package was built from."""
    skip_source_impute: bool | None = None
    n_clones: int | None = None
    lambda_l0: float | None = None
    beta: float | None = None
    lambda_l2: float | None = None
    learning_rate: float | None = None
    epochs: int | None = None
    """Epochs this run ran (with a resume, the additional ones)."""
    epochs_total: int | None = None
    """Epochs of the fit in all, a resumed checkpoint's included."""
    device: str | None = None
    """The platform JAX ran on (``cpu``, ``gpu``, ``tpu``)."""
    seed: int | None = None
    resume_from: str | None = None
    checkpoint_output: str | None = None
    """The checkpoint this run wrote."""
    domain_variables: Sequence[str] | None = None
    hierarchical_domains: Sequence[str] | None = None
    target_config: str | None = None
    """The target config applied (PolicyEngine's own by default), None with ``--all-active-targets``."""
    weight_format: str | None = None
    """``clone_level``: one weight per package column, PolicyEngine's only format."""
    git_commit: str | None = None
    """The commit of jaxcal's source tree (``GIT_COMMIT`` when it is not a checkout)."""
    git_branch: str | None = None
    git_dirty: bool | None = None
    package_version: str | None = None
    """jaxcal's version."""
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
    errors_by_level: Mapping[str, Any] | None = None
    """The same errors per geography level (:func:`jaxcal.workflow.errors_by_level`), each with
    its targets and impossible ones; ``national`` also holds ``n_states``, the states the
    package's columns are in, when it has them (its national rows sum over those states)."""
    weight_health: Mapping[str, Any] | None = None
    holdout: Mapping[str, Any] | None = None
    """The held-out split and, for a fit, its best epoch and losses."""
    excluded_from_fit: Mapping[str, Any] | None = None
    """A fit's ``--exclude-from-fit``: its rules, the targets they matched and their errors (the
    top-level errors are those of the fitted targets)."""
    fail_if: Sequence[Mapping[str, Any]] | None = None
    """A fit's ``--fail-if`` rules, each with the targets it covers, those outside its tolerance,
    the worst and whether it passed."""
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
        their ``diagnostics`` table (rows of ``problem``'s targets, by index), the weight health and
        the error summary of the achievable targets, overall and per geography level;
        PolicyEngine's top-level keys from the package's metadata, the
        ``hyperparameters`` and the source tree; ``fields`` fill (or override) the rest."""
        directory = pathlib.Path(directory)
        meta = problem.metadata
        hyper = fields.get("hyperparameters") or {}
        measured: dict[str, Any] = {
            "dataset": meta.get("dataset_path"),
            "db_path": meta.get("db_path"),
            "skip_source_impute": meta.get("skip_source_impute", True),
            "n_clones": meta.get("n_clones"),
            "domain_variables": meta.get("domain_variables"),
            "hierarchical_domains": meta.get("hierarchical_domains"),
            **{name: hyper[name] for name in PE_HYPERPARAMETERS if hyper.get(name) is not None},
            **_git_provenance(),
        }
        if weights is not None:
            health = weight_health(weights)
            measured |= {
                "weight_format": "clone_level",
                "weight_sum": health["total"],
                "weight_nonzero": health["count_positive"],
                "weight_health": health,
            }
        if diagnostics is not None:
            measured |= error_summary(diagnostics.loc[diagnostics["achievable"], "rel_error"])
            levels = problem.targets["geo_level"].to_numpy()[diagnostics.index.to_numpy()]
            by_level = errors_by_level(diagnostics["rel_error"], diagnostics["achievable"], levels)
            if "national" in by_level and "state_fips" in problem.geography:
                by_level["national"]["n_states"] = int(np.unique(problem.geography["state_fips"]).size)
            measured["errors_by_level"] = by_level
        versions = _versions()
        return cls(
            command=command,
            n_targets=problem.n_targets,
            n_records=problem.n_records,
            artifacts={name: f"sha256:{sha256_file(directory / name)}" for name in artifacts},
            versions=versions,
            jaxcal_version=versions.get("jaxcal"),
            package_version=versions.get("jaxcal"),
            **(measured | fields),
        )

    @classmethod
    def read(cls, directory: str | os.PathLike, *, checked: Sequence[str] = ()) -> RunRecord:
        """The record in ``directory`` (empty when it has none); keys outside the schema are ignored.

        ``ValueError`` naming the file for one that is not a JSON object (unreadable, not JSON,
        nested too deep to parse) or whose field among ``checked`` holds another JSON type than
        its annotation's (``n_records`` as text, ``artifacts`` as a list)."""
        path = pathlib.Path(directory) / RUN_CONFIG
        if not path.exists():
            return cls()
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as error:  # ValueError: not JSON, not UTF-8
            raise ValueError(f"{path} is not a readable run config ({type(error).__name__}: {error})") from None
        if not isinstance(saved, dict):
            raise ValueError(f"{path} must hold a JSON object, got {_json_type(saved)}")
        fields = {f.name: saved[f.name] for f in dataclasses.fields(cls) if saved.get(f.name) is not None}
        for f in dataclasses.fields(cls):
            if f.name in checked and f.name in fields and not _has_type(fields[f.name], str(f.type)):
                wanted = _TYPE_PHRASES[str(f.type).split("[")[0].split(" |")[0]]
                raise ValueError(f"{path}: {f.name} must be {wanted}, got {_json_type(fields[f.name])}")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN and infinities as null)."""
        return json_safe({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def write(self, directory: str | os.PathLike) -> pathlib.Path:
        """Write ``unified_run_config.json`` into ``directory``, atomically; return its path."""
        path = pathlib.Path(directory) / RUN_CONFIG
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        atomic_write(path, lambda f: f.write(text), mode="w")
        return path


_TYPE_PHRASES = {
    "str": "text",
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "Sequence": "a JSON array",
    "Mapping": "a JSON object",
}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether the JSON ``value`` is what a field annotated ``annotation`` holds: its outer type,
    and for ``Sequence[str]`` / ``Sequence[Mapping...]`` each item's."""
    outer = annotation.split("[")[0].split(" |")[0]
    if outer in ("int", "float") and isinstance(value, bool):
        return False
    kinds = {"str": str, "bool": bool, "int": int, "float": (int, float), "Sequence": list, "Mapping": dict}[outer]
    if not isinstance(value, kinds):
        return False
    if annotation.startswith("Sequence[str]"):
        return all(isinstance(item, str) for item in value)
    if annotation.startswith("Sequence[Mapping"):
        return all(isinstance(item, dict) for item in value)
    return True


def _json_type(value: Any) -> str:
    """``value``'s JSON type, with a short view of it."""
    names = {dict: "an object", list: "an array", str: "text", bool: "a boolean", type(None): "null"}
    name = names.get(type(value), "a number")
    shown = repr(value)
    return f"{name} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def _git_provenance() -> dict[str, Any]:
    """policyengine-us-data's ``git_commit``, ``git_branch`` and ``git_dirty``, of the source tree
    jaxcal runs from (None outside a checkout, the commit and branch then from ``GIT_COMMIT`` and
    ``GIT_BRANCH`` as PolicyEngine reads them)."""

    def git(*args: str) -> str | None:
        if not (SOURCE_DIRECTORY / ".git").exists():  # an installed copy: not the checkout around it
            return None
        try:
            return subprocess.run(
                ["git", *args], cwd=SOURCE_DIRECTORY, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("--no-optional-locks", "status", "--porcelain")
    return {
        "git_commit": git("rev-parse", "HEAD") or os.environ.get("GIT_COMMIT"),
        "git_branch": git("rev-parse", "--abbrev-ref", "HEAD") or os.environ.get("GIT_BRANCH"),
        "git_dirty": None if status is None else bool(status),
    }


def _versions() -> dict[str, str]:
    """The one versions block of every run record: Python and the installed packages that ran it."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
