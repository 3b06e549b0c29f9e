"""What a fit run is asked to do, checked before any device work: ``jaxcal fit``'s flags as one value.

This module imports no JAX: a plan is made and checked (and its mistakes reported) before the
engine loads. The defaults come from :data:`jaxcal.PE_DEFAULTS` when the hyperparameters are
resolved.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, final

from ._names import FIT_FILES

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

HYPERPARAMETERS = ("epochs", "beta", "lambda_l0", "lambda_l2", "learning_rate")
"""What a named set, a preset and the flags choose (policyengine-us-data's ``fit_l0_weights`` settings)."""
PROGRESS_EPOCHS = 10
"""Epochs between progress updates when no ``log_freq`` is given."""
LOG_FORMATS = ("pe", "microcalibrate")
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
PLATFORM_ALIASES = {"cuda": "gpu"}
"""Other spellings of a platform: policyengine-us-data's ``--device cuda``."""
DEFAULT_OUTPUT = pathlib.Path("storage/calibration/calibration_weights.npy")
MAX_EPOCHS = 10**8
"""The most epochs one run takes: its per-epoch history (objective, its terms, records kept) is
kept in memory, 2 GB at this bound, and the epoch counter is int32."""
SEED_BOUND = 2**32
"""Seeds lie in ``[0, SEED_BOUND)``: ``jax.random.key`` keeps 32 bits of a seed (without x64), so
that others would give another seed's key."""


def checkpoint_path_for(weights_path: str | os.PathLike) -> pathlib.Path:
    """The checkpoint written beside a weights file: ``w.npy`` -> ``w.checkpoint.npz``."""
    return pathlib.Path(weights_path).with_suffix(".checkpoint.npz")


@final
@dataclasses.dataclass(frozen=True)
class HoldoutPlan:
    """Hold out ``fraction`` of the target families (``family_column``'s values, default geography
    level x variable x domain), drawn with ``seed``; stop ``patience`` epochs after the best
    held-out loss (an improvement must exceed ``min_delta``)."""

    fraction: float
    seed: int
    family_column: str | None = None
    patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"--holdout-fraction must lie in (0, 1), got {self.fraction}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"--early-stopping-patience must be a positive number of epochs, got {self.patience}")
        if not self.min_delta >= 0:
            raise ValueError(f"--min-delta must not be negative, got {self.min_delta}")
        check_seed(self.seed, "--holdout-seed (default: --seed)")

    def to_dict(self) -> dict[str, Any]:
        """The run record's and the checkpoint's ``holdout`` hyperparameters."""
        return {"fraction": self.fraction, "seed": self.seed, "family_column": self.family_column}


@final
@dataclasses.dataclass(frozen=True)
class FitPlan:
    """A fit run, checked: every mistake in it raises ``ValueError`` (naming the flag) on creation.

    Paths may be given as text. ``hyperparameters`` holds every name of :data:`HYPERPARAMETERS`
    (see :func:`resolve_hyperparameters`). The outputs go beside ``output`` (the weights ``.npy``);
    its directory need not exist, but must be creatable and writable. With ``log_freq``, every
    that many epochs a row per target goes to ``calibration_log.csv`` and a checkpoint is
    written; without it, progress is reported every :data:`PROGRESS_EPOCHS` epochs.

    As policyengine-us-data's fit, the package's targets are restricted by ``target_config``,
    else by PolicyEngine's own (:data:`jaxcal.io.POLICYENGINE_TARGET_CONFIG`) unless
    ``all_active_targets``; with ``target_groups`` the loss weighs PolicyEngine's target groups
    equally (:func:`jaxcal.io.policyengine_target_groups`). The targets ``exclude_from_fit``'s
    rules match (:func:`jaxcal.io.parse_target_rules`) weigh 0 in the loss but stay in the
    package, so that every output reports them; ``fail_if`` holds :class:`ToleranceRule` texts
    the fitted weights must meet.
    """

    package_path: pathlib.Path
    hyperparameters: Mapping[str, float | int]
    output: pathlib.Path = DEFAULT_OUTPUT
    seed: int = 42
    device: str = "auto"
    devices: int | Literal["all"] | None = None
    log_freq: int | None = None
    log_format: str = "pe"
    target_config: pathlib.Path | None = None
    all_active_targets: bool = False
    target_groups: bool = True
    optimizer: str = "pe-adam"
    """A name of :data:`jaxcal.OPTIMIZER_NAMES`: PolicyEngine's Adam, or one that converges."""
    resume_from: pathlib.Path | None = None
    checkpoint_output: pathlib.Path | None = None
    pe_compat_adam_restarts: bool = False
    holdout: HoldoutPlan | None = None
    allow_pickle: bool = False
    quiet: bool = False
    exclude_from_fit: tuple[str, ...] = ()
    fail_if: tuple[str, ...] = ()
    distributed: bool = False
    """One process of a multi-process fit (``jax.distributed``); the ``coordinator``,
    ``num_processes`` and ``process_id`` not given are JAX's to find (Cloud TPU, SLURM)."""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    _exclusions: tuple[tuple[str, tuple[dict[str, str], ...]], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    """Each ``exclude_from_fit`` text with its rules, read once (a rules file is not read again)."""
    _tolerances: tuple[ToleranceRule, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from ..io._targets import parse_target_rules

        object.__setattr__(self, "exclude_from_fit", tuple(self.exclude_from_fit))
        object.__setattr__(self, "fail_if", tuple(self.fail_if))
        exclusions = tuple(
            (text, tuple(parse_target_rules(text, flag="--exclude-from-fit"))) for text in self.exclude_from_fit
        )
        object.__setattr__(self, "_exclusions", exclusions)
        object.__setattr__(self, "_tolerances", tuple(ToleranceRule.parse(text) for text in self.fail_if))
        for name in ("package_path", "output", "target_config", "resume_from", "checkpoint_output"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, pathlib.Path(getattr(self, name)))
        _check_hyperparameters(self.hyperparameters)
        check_seed(self.seed)
        object.__setattr__(self, "device", PLATFORM_ALIASES.get(self.device, self.device))
        if self.device not in PLATFORMS:
            raise ValueError(f"--device must be one of {', '.join(PLATFORMS)}, got {self.device!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.log_freq is not None and self.log_freq < 1:
            raise ValueError(f"--log-freq must be a positive number of epochs, got {self.log_freq}")
        if self.pe_compat_adam_restarts and self.log_freq is None:
            raise ValueError(
                "--pe-compat-adam-restarts needs --log-freq (PolicyEngine restarts Adam at every log chunk)"
            )
        from .._defaults import OPTIMIZER_NAMES

        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZER_NAMES)}, got {self.optimizer!r}")
        if self.pe_compat_adam_restarts and self.optimizer != "pe-adam":
            raise ValueError("--pe-compat-adam-restarts restarts PolicyEngine's Adam: it needs --optimizer pe-adam")
        if self.holdout is not None and self.pe_compat_adam_restarts:
            raise ValueError("--pe-compat-adam-restarts cannot be combined with held-out targets")
        if self.holdout is not None and self.devices is not None:
            raise ValueError("--devices cannot be combined with held-out targets (the held-out fit runs on one device)")
        if self.coordinator is not None or self.num_processes is not None or self.process_id is not None:
            object.__setattr__(self, "distributed", True)
        if self.distributed:
            self._check_processes()
        if self.all_active_targets and self.target_config is not None:
            raise ValueError("--all-active-targets cannot be used with --target-config")
        if self.output.suffix != ".npy":
            raise ValueError(f"--output must name a .npy file, got {self.output}")
        from ..io._files import check_inputs_spared  # numpy, which registering the command does without

        written = [self.output, self.checkpoint_path, *(self.output.parent / name for name in FIT_FILES)]
        check_inputs_spared(written, {"--package-path": self.package_path, "--target-config": self.target_config})
        from ..io._files import check_writable

        check_writable(self.output.parent)
        check_writable(self.checkpoint_path.parent)
        if self.output.is_dir():
            raise ValueError(f"--output {self.output} is a directory; name the weights .npy file in it")
        for path in written[1:]:
            if path.is_dir():
                raise ValueError(f"cannot write {path}: it is a directory")

    def _check_processes(self) -> None:
        if self.holdout is not None:
            raise ValueError("a multi-process fit cannot hold out targets (the held-out fit runs on one device)")
        if self.devices not in (None, "all"):
            raise ValueError("a multi-process fit splits the records over every process's devices: drop --devices")
        object.__setattr__(self, "devices", "all")
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"--num-processes must be positive, got {self.num_processes}")
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or self.process_id + 1):
            raise ValueError(f"--process-id must lie in 0 to {(self.num_processes or 1) - 1}, got {self.process_id}")
        if self.coordinator is not None and not _is_host_port(self.coordinator):
            raise ValueError(f"--coordinator must be HOST:PORT, got {self.coordinator!r}")

    @property
    def epochs(self) -> int:
        return int(self.hyperparameters["epochs"])

    @property
    def chunk_epochs(self) -> int:
        """Epochs a compiled chunk runs between reports: ``log_freq``, else :data:`PROGRESS_EPOCHS`."""
        return self.log_freq or PROGRESS_EPOCHS

    @property
    def checkpoint_path(self) -> pathlib.Path:
        return self.checkpoint_output or checkpoint_path_for(self.output)

    @property
    def applied_target_config(self) -> pathlib.Path | None:
        """The target config the fit applies: ``target_config``, else PolicyEngine's unless
        ``all_active_targets``."""
        if self.target_config is not None or self.all_active_targets:
            return self.target_config
        from ..io._targets import POLICYENGINE_TARGET_CONFIG  # numpy only, as check_inputs_spared

        return POLICYENGINE_TARGET_CONFIG

    def exclusion_rules(self) -> list[dict[str, str]]:
        """The rules of every ``--exclude-from-fit``, in order."""
        return [dict(rule) for _, rules in self._exclusions for rule in rules]

    def tolerance_rules(self) -> list[ToleranceRule]:
        return list(self._tolerances)

    def excluded_targets(self, targets: pd.DataFrame) -> np.ndarray:
        """Which of ``targets`` (the fitted package's) the fit leaves out of its loss; a
        ``ValueError`` when a rule of ``--exclude-from-fit`` or ``--fail-if`` matches none of
        them (a misspelt rule would otherwise change nothing) or every target is excluded."""
        import numpy as np

        from ..io._targets import target_rules_mask

        excluded = np.zeros(len(targets), bool)
        for text, rules in self._exclusions:
            matched = target_rules_mask(targets, rules)
            if not matched.any():
                raise ValueError(f"--exclude-from-fit {text} matches none of the {len(targets):,} fitted targets")
            excluded |= matched
        if excluded.all():
            raise ValueError(f"--exclude-from-fit leaves none of the {len(targets):,} targets to fit")
        for rule in self._tolerances:
            if not rule.mask(targets).any():
                raise ValueError(f"--fail-if {rule.text} matches none of the {len(targets):,} fitted targets")
        return excluded

    def fit_hyperparameters(self) -> dict[str, Any]:
        """What a checkpoint records and a resumed fit compares: the hyperparameters, whether the
        loss weighs target groups, the optimizer, the targets excluded from it and the split."""
        split = {"holdout": self.holdout.to_dict()} if self.holdout else {}
        chosen = {"target_groups": self.target_groups, "optimizer": self.optimizer}
        excluded = {"exclude_from_fit": self.exclusion_rules()} if self.exclude_from_fit else {}
        return dict(self.hyperparameters) | chosen | excluded | split

    def record_hyperparameters(self) -> dict[str, Any]:
        """The run record's ``hyperparameters``: :meth:`fit_hyperparameters` and where and how it ran."""
        return self.fit_hyperparameters() | {
            "seed": self.seed,
            "device": self.device,
            "devices": self.devices,
            "pe_compat_adam_restarts": self.pe_compat_adam_restarts,
            "all_active_targets": self.all_active_targets,
        }


@final
@dataclasses.dataclass(frozen=True)
class ToleranceRule:
    """``--fail-if FIELD=VALUE[,FIELD=VALUE...]:TOLERANCE``: every target the rule matches must
    end within ``tolerance`` (a fraction; ``1%`` is 0.01) of its value, in PolicyEngine's
    relative error, else the fit exits non-zero (after writing its outputs)."""

    text: str
    rules: tuple[Mapping[str, str], ...]
    tolerance: float

    @classmethod
    def parse(cls, text: str) -> ToleranceRule:
        from ..io._targets import parse_target_rules

        selector, colon, limit = text.rpartition(":")
        number = limit.strip().removesuffix("%")
        if not colon or not selector or not _numeric_text(number):
            raise ValueError(
                f"--fail-if {text!r}: expected FIELD=VALUE[,FIELD=VALUE...]:TOLERANCE, e.g. "
                "variable=person_count,geo_level=national:1%"
            )
        tolerance = float(number) / (100 if limit.strip().endswith("%") else 1)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"--fail-if {text!r}: the tolerance must be a non-negative number, got {limit!r}")
        return cls(text, tuple(parse_target_rules(selector, flag="--fail-if")), tolerance)

    def mask(self, targets: pd.DataFrame) -> np.ndarray:
        from ..io._targets import target_rules_mask

        return target_rules_mask(targets, self.rules)

    def check(self, targets: pd.DataFrame, names: Any, rel_error: Any) -> dict[str, Any]:
        """The rule against the fitted weights' relative errors: the targets it covers, those
        outside the tolerance and the worst one, and whether it passed."""
        import numpy as np

        covered = np.flatnonzero(self.mask(targets))
        errors = np.abs(np.asarray(rel_error, np.float64)[covered])
        worst = covered[np.argmax(errors)]
        failed = int((~(errors <= self.tolerance)).sum())
        return {
            "rule": self.text,
            "tolerance": self.tolerance,
            "n_targets": int(covered.size),
            "n_failed": failed,
            "worst_target": str(names[worst]),
            "worst_rel_error": float(np.asarray(rel_error, np.float64)[worst]),
            "passed": failed == 0,
        }


def resolve_hyperparameters(
    flags: Mapping[str, Any],
    *,
    named_set: str | None = None,
    presets_file: str | os.PathLike | None = None,
    preset: str | None = None,
) -> dict[str, float | int]:
    """policyengine-us-data's defaults (:data:`jaxcal.PE_DEFAULTS`), then the named set of
    ``presets_file`` (default ``configs/presets.yaml``), then ``preset``'s lambda_l0
    (:data:`jaxcal.PE_PRESETS`), then the ``flags`` that are not None."""
    from .._defaults import PE_DEFAULTS, PE_PRESETS

    chosen: dict[str, Any] = {name: getattr(PE_DEFAULTS, name) for name in HYPERPARAMETERS}
    if named_set is not None:
        chosen |= load_named_set(named_set, presets_file)
    if preset is not None:
        if preset not in PE_PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; choose {' or '.join(PE_PRESETS)}")
        chosen["lambda_l0"] = PE_PRESETS[preset]
    chosen |= {name: flags[name] for name in HYPERPARAMETERS if flags.get(name) is not None}
    _check_hyperparameters(chosen)
    return {name: int(value) if name == "epochs" else float(value) for name, value in chosen.items()}


def load_named_set(name: str, presets_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The hyperparameters named ``name`` in a presets YAML (a mapping of names to settings, each a
    mapping of :data:`HYPERPARAMETERS` to numbers), checked: a ``ValueError`` naming the file."""
    import yaml

    from ..io._files import load_yaml

    path = pathlib.Path(presets_file) if presets_file is not None else _default_presets_file()
    try:
        sets = load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"presets file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the presets file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"presets file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(sets, dict):
        raise ValueError(f"presets file {path} must map set names to settings, got a {type(sets).__name__}")
    if name not in sets:
        raise ValueError(f"unknown hyperparameter set {name!r}; {path} has: {', '.join(sorted(map(str, sets)))}")
    chosen = sets[name] or {}
    if not isinstance(chosen, dict):
        raise ValueError(f"set {name!r} in {path} must map hyperparameters to numbers, got a {type(chosen).__name__}")
    unknown = set(map(str, chosen)) - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(
            f"set {name!r} in {path} has unknown keys {sorted(unknown)}; allowed: {sorted(HYPERPARAMETERS)}"
        )
    for key, value in chosen.items():
        whole = key == "epochs"
        if not (_is_number(value) and math.isfinite(value) and (isinstance(value, int) or not whole)):
            kind = "a whole number" if whole else "a finite number"
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and _numeric_text(value) else ""
            raise ValueError(f"{key} of set {name!r} in {path} must be {kind}, got {value!r}{hint}")
    return chosen


def _numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _default_presets_file() -> pathlib.Path:
    local = pathlib.Path("configs/presets.yaml")
    return local if local.is_file() else pathlib.Path(__file__).resolve().parents[2] / "configs" / "presets.yaml"


def _check_hyperparameters(hyper: Mapping[str, Any]) -> None:
    missing = [name for name in HYPERPARAMETERS if name not in hyper]
    if missing:
        raise ValueError(f"hyperparameters lack {', '.join(missing)}")
    epochs = hyper["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"--epochs must be a non-negative whole number, got {epochs}")
    if epochs > MAX_EPOCHS:
        raise ValueError(
            f"--epochs {epochs:,} is more than one run keeps a loss history for ({MAX_EPOCHS:,}, 20 bytes an "
            "epoch); run it in parts with --resume-from"
        )
    for name in ("lambda_l0", "lambda_l2"):
        if not _is_number(hyper[name]) or not math.isfinite(hyper[name]) or hyper[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a finite non-negative number, got {hyper[name]}")
    for name in ("beta", "learning_rate"):
        if not _is_number(hyper[name]) or not math.isfinite(hyper[name]) or hyper[name] <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {hyper[name]}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_seed(seed: Any, flag: str = "--seed") -> None:
    """That ``seed`` is a whole number in ``[0, SEED_BOUND)`` (a ``ValueError`` naming ``flag``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_BOUND:
        raise ValueError(f"{flag} must be a whole number from 0 to 2**32 - 1, got {seed}")


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
