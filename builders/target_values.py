"""What one household contributes to one target: the rules, on plain numpy arrays.

A target is a variable summed over a stratum's domain. Its non-geographic constraints
(``variable op value``, ``op`` in ``== != > >= < <=`` or ``in`` a ``|``-separated set) are
AND-ed per person. Then:

- an amount of entity ``E`` (person, tax unit, SPM unit, household...) counts for an
  ``E`` that qualifies, i.e. has at least one qualifying person, and is summed into its
  household, each entity once (a household amount: when any member qualifies);
- ``E_count`` (``household_count``, ``person_count``, ``tax_unit_count``...) counts the
  qualifying ``E`` of the household.

Without constraints every entity qualifies. A target may name a sum of variables of one
entity (``a+b``, :func:`components`). Geography is applied later, by column.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np

from .target_db import Constraint, parse_constraint_value

_OPERATORS = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def components(variable: str) -> list[str]:
    """The variables a target sums: one, or the parts of policyengine-us-data's additive
    expression ``a+b+...`` (its ``target_variable_components``), whose values add up per
    household since each part is summed over the same qualifying entities."""
    return [part.strip() for part in variable.split("+")]


def satisfies(values: np.ndarray, constraint: Constraint) -> np.ndarray:
    """``values op value`` elementwise, with the value parsed as int, float, bool or string
    (for ``in``, each ``|``-separated part, stripped, as policyengine-us-data splits them)."""
    if constraint.operation == "in":
        allowed = [parse_constraint_value(part.strip()) for part in constraint.value.split("|")]
        _check_comparable(values, allowed, constraint)
        return np.isin(values, allowed)
    value = parse_constraint_value(constraint.value)
    _check_comparable(values, [value], constraint)
    return np.asarray(_OPERATORS[constraint.operation](values, value), bool)


def _check_comparable(values: np.ndarray, wanted: list, constraint: Constraint) -> None:
    if any(isinstance(v, str) for v in wanted) and values.dtype.kind not in "OUS":
        raise ValueError(f"constraint {constraint} compares the numeric variable {constraint.variable} with text")


def person_mask(
    person_values: Mapping[str, np.ndarray], constraints: Sequence[Constraint], n_persons: int
) -> np.ndarray:
    """The persons who satisfy every constraint (``person_values`` maps each variable to a per-person array)."""
    mask = np.ones(n_persons, bool)
    for constraint in constraints:
        mask &= satisfies(person_values[constraint.variable], constraint)
    return mask


def household_values(
    qualifying_persons: np.ndarray,
    person_entity: np.ndarray,
    entity_household: np.ndarray,
    n_households: int,
    entity_values: np.ndarray | None = None,
) -> np.ndarray:
    """Per household: the sum of ``entity_values`` (or of 1, counting) over its entities that
    hold at least one qualifying person. ``person_entity`` gives each person's entity,
    ``entity_household`` each entity's household (positions)."""
    n_entities = entity_household.size
    qualifies = np.bincount(person_entity, weights=qualifying_persons, minlength=n_entities) > 0
    contribution = qualifies if entity_values is None else np.where(qualifies, entity_values, 0.0)
    return np.bincount(entity_household, weights=contribution, minlength=n_households)
