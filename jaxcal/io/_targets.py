"""Target tables: PolicyEngine's target-config include/exclude rules, its target groups and its
initial weights."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ._package import CalibrationPackage

RULE_FIELDS = ("variable", "geo_level", "domain_variable")
SELECTOR_FIELDS = (*RULE_FIELDS, "geographic_id")
"""What a rule of ``jaxcal fit --exclude-from-fit`` or ``--fail-if`` may name: a target config's
fields and, beyond PolicyEngine's, one place."""
POLICYENGINE_TARGET_CONFIG = pathlib.Path(__file__).with_name("policyengine_target_config.yaml")
"""policyengine-us-data 1.115.4's ``calibration/target_config.yaml``: what its fit keeps by default."""


def load_target_config(path: str | os.PathLike, **shape: Any) -> dict[str, list[dict[str, str]]]:
    """Read a target-config YAML (keys ``include`` and/or ``exclude``, each a list of rules
    ``{variable, geo_level?, domain_variable?}``; ``shape``: :func:`check_target_config`'s
    ``keys`` and ``fields``) and check its shape; ``ValueError`` if bad."""
    import yaml

    from ._files import load_yaml

    try:
        with open(path) as f:
            config = load_yaml(f)
    except FileNotFoundError:
        raise ValueError(f"target config not found: {path}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"target config {path} is not valid YAML: {error}") from None
    return check_target_config(config or {}, source=str(path), **shape)


def check_target_config(
    config: Any,
    *,
    source: str = "target config",
    keys: tuple[str, ...] = ("include", "exclude"),
    fields: tuple[str, ...] = RULE_FIELDS,
) -> dict[str, list[dict[str, str]]]:
    """``config`` checked: a mapping of ``keys`` to lists of rules, each a mapping of some of
    ``fields`` to values (``variable`` required in a target config's); ``ValueError`` naming
    ``source`` if it is not."""
    if not isinstance(config, dict) or set(config) - set(keys):
        raise ValueError(f"{source}: expected a mapping with keys {' and/or '.join(map(repr, keys))}")
    checked: dict[str, list[dict[str, str]]] = {}
    for key in keys:
        rules = config.get(key) or []
        if not isinstance(rules, list):
            raise ValueError(f"{source}: '{key}' must be a list of rules")
        for i, rule in enumerate(rules):
            required = {"variable"} if fields == RULE_FIELDS else set()
            if not isinstance(rule, dict) or not rule or required - set(rule) or set(rule) - set(fields):
                named = "'variable' and optionally " if required else "some of "
                others = fields[1:] if required else fields
                raise ValueError(
                    f"{source}: {key}[{i}] must be a mapping with {named}{', '.join(map(repr, others))}, got {rule!r}"
                )
        checked[key] = [{k: str(v) for k, v in rule.items()} for rule in rules]
    return checked


def parse_target_rules(text: str, *, flag: str) -> list[dict[str, str]]:
    """The rules ``text`` gives: a YAML file whose ``exclude`` list holds target-config rules (a
    place's ``geographic_id`` allowed), or one rule written ``field=value[,field=value...]``
    (fields of :data:`SELECTOR_FIELDS`). ``ValueError`` naming ``flag`` for a bad one."""
    if text.endswith((".yaml", ".yml")) or os.path.isfile(text):
        config = load_target_config(text, keys=("exclude",), fields=SELECTOR_FIELDS)
        if not config["exclude"]:
            raise ValueError(f"{flag} {text}: the file names no targets (an 'exclude' list of rules)")
        return config["exclude"]
    rule: dict[str, str] = {}
    for part in text.split(","):
        field, equals, value = part.partition("=")
        field, value = field.strip(), value.strip()
        if not equals or field not in SELECTOR_FIELDS or not value or field in rule:
            raise ValueError(
                f"{flag} {text!r}: expected field=value[,field=value...] with each field once, one of "
                f"{', '.join(SELECTOR_FIELDS)} (or a YAML file of rules)"
            )
        rule[field] = value
    return [rule]


def target_rules_mask(targets: pd.DataFrame, rules: Sequence[Mapping[str, str]]) -> np.ndarray:
    """Rows some rule matches: every field the rule gives equals the row's."""
    return _matches(targets, rules)


def target_config_mask(targets: pd.DataFrame, config: dict[str, list[dict[str, str]]]) -> np.ndarray:
    """Rows kept: (include given ? any include rule matches : all) and no exclude rule matches.

    Inside a rule every given field must equal the row's; a rule without
    ``domain_variable`` matches every domain of its variable and level, including none.
    """
    keep = _matches(targets, config["include"]) if config.get("include") else np.ones(len(targets), bool)
    if config.get("exclude"):
        keep &= ~_matches(targets, config["exclude"])
    return keep


def apply_target_config(package: CalibrationPackage, config: dict[str, list[dict[str, str]]]) -> CalibrationPackage:
    """The package restricted to the targets ``config`` keeps; ``ValueError`` if it keeps none."""
    keep = target_config_mask(package.targets, config)
    if not keep.any():
        raise ValueError(f"the target config keeps none of the package's {package.n_targets} targets")
    return package.select_targets(keep)


def policyengine_target_groups(targets: pd.DataFrame) -> np.ndarray:
    """policyengine-us-data's loss groups (``create_target_groups``): one group per geography
    level (national ``US``, state id below 100, district) and (domain, variable) pair, numbered
    national first, then state, then district, and inside a level targets without a domain
    first, then by domain and variable name. Each group weighs 1 in the loss, shared by its
    targets.

    Where PolicyEngine leaves targets in group 0 (a ``geographic_id`` that is neither ``US`` nor
    a number, or a missing domain stored as NaN rather than None), they get groups of their own
    here: after the districts, and with the targets that have no domain.
    """
    import pandas as pd

    domain = targets["domain_variable"].astype(object)
    has_domain = domain.notna().to_numpy()
    keys = pd.DataFrame(
        {
            "level": [_geo_level(geo) for geo in targets["geographic_id"]],
            "has_domain": has_domain,
            "domain": np.where(has_domain, domain.astype(str), ""),
            "variable": targets["variable"].astype(str).to_numpy(),
        }
    )
    return keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy(np.int32)


def _geo_level(geographic_id: Any) -> int:
    """0 national, 1 state, 2 district, 3 anything else (PolicyEngine's ``get_geo_level``)."""
    if geographic_id == "US":
        return 0
    try:
        return 1 if int(geographic_id) < 100 else 2
    except (TypeError, ValueError):
        return 3


def policyengine_initial_weights(package: CalibrationPackage) -> np.ndarray:
    """policyengine-us-data's starting weights: 100 for every column, except that the columns
    of a district with ``person_count`` targets in domain ``age`` get that district's
    population (the sum of those targets) divided by the number of columns they touch. With a
    record range, every process counts its columns (each process must call it) and sets them."""
    targets = package.targets
    weights = np.full(package.n_records, 100.0)
    age_rows = (
        (targets["variable"] == "person_count")
        & (targets["domain_variable"] == "age")
        & (targets["geo_level"] == "district")
    ).to_numpy()
    if not age_rows.any():
        return weights
    groups = [group for _, group in targets[age_rows].groupby("geographic_id", sort=True)]
    columns = [np.unique(package.matrix[group.index.to_numpy()].indices) for group in groups]
    counts = np.array([c.size for c in columns], np.int64)
    if package.records is not None:  # a process's share: the columns of every process count
        from .._sharding import process_sum

        counts = process_sum(counts)
    for group, cols, count in zip(groups, columns, counts):
        if count:
            weights[cols] = group["value"].sum() / count
    return weights


def _matches(targets: pd.DataFrame, rules: Sequence[Mapping[str, str]]) -> np.ndarray:
    mask = np.zeros(len(targets), bool)
    for rule in rules:
        rule_mask = np.ones(len(targets), bool)
        for field, wanted in rule.items():
            rule_mask &= (targets[field].astype(object) == wanted).to_numpy()
        mask |= rule_mask
    return mask
