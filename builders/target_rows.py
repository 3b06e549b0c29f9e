"""The matrix rows: the database's targets ordered national, state, district, then by
variable and geographic id, named as policyengine-us-data names them (:func:`target_name`),
and narrowed to what a target config keeps (:func:`configured_rows`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .target_db import GEO_LEVEL_ORDER, Constraint

if TYPE_CHECKING:
    import pandas as pd

TARGET_COLUMNS = (
    "target_id",
    "target_name",
    "variable",
    "geo_level",
    "geographic_id",
    "domain_variable",
    "reform_id",
    "value",
    "original_value",
    "uprating_factor",
    "period",
    "source",
    "stratum_id",
)
"""The columns of a built package's targets table, in order."""
RECONCILED_COLUMNS = ("hif", "state_uprating_factor")
"""The columns a build with hierarchical domains adds (:func:`builders.target_db.reconcile_districts`)."""
PLACE_VARIABLES = frozenset({"state_fips", "state_code", "congressional_district_geoid"})
"""Constraints left out of a row's name (policyengine-us-data's ``_GEO_VARS``)."""
SETTLED_BY_GEOGRAPHY = PLACE_VARIABLES | {"ucgid_str"}
"""Constraints a column's geography settles: the row's place (``ucgid_str`` included, which
the row's ``geographic_id`` then is), not a per-person test."""


@dataclasses.dataclass(frozen=True)
class TargetRows:
    """The matrix rows: the targets table and each row's non-geographic constraints."""

    table: pd.DataFrame
    """One row per target: the database's columns, ``geo_level``, ``geographic_id``,
    ``domain_variable`` and ``target_name``."""
    constraints: tuple[tuple[Constraint, ...], ...]


def target_name(variable: str, constraints: Sequence[Constraint], reform_id: int = 0) -> str:
    """policyengine-us-data's row name: ``national`` or ``state_6`` / ``cd_601``, the variable
    (``<variable>_expenditure`` for a tax expenditure, ``reform_id > 0``), then
    ``[variable op value,...]`` for the other constraints, e.g. ``cd_601/person_count/[age<18]``."""
    places = [
        f"state_{c.value}" if c.variable == "state_fips" else f"cd_{c.value}"
        for c in constraints
        if c.variable in ("state_fips", "congressional_district_geoid")
    ]
    parts = ["/".join(places) or "national", f"{variable}_expenditure" if reform_id > 0 else variable]
    others = [str(c) for c in constraints if c.variable not in PLACE_VARIABLES]
    if others:
        parts.append("[" + ",".join(others) + "]")
    return "/".join(parts)


def plan_target_rows(targets: pd.DataFrame, constraints_by_stratum: Mapping[int, Sequence[Constraint]]) -> TargetRows:
    """Order ``targets`` (from :func:`builders.target_db.read_targets`) national, state, district,
    then by variable, reform and geographic id (ties keep database order) and name them."""
    table = targets.copy()
    stratum_constraints = [tuple(constraints_by_stratum.get(int(s), ())) for s in table["stratum_id"]]
    table["target_name"] = [
        target_name(v, c, int(r)) for v, c, r in zip(table["variable"], stratum_constraints, table["reform_id"])
    ]
    table["_constraints"] = stratum_constraints
    # pandas' own annotations type df[column] as Series | DataFrame; this is Series.map, which takes a dict.
    table["_level"] = table["geo_level"].map(GEO_LEVEL_ORDER)  # pyright: ignore[reportArgumentType]
    table = table.sort_values(["_level", "variable", "reform_id", "geographic_id"], kind="stable")
    constraints = tuple(
        tuple(c for c in row if c.variable not in SETTLED_BY_GEOGRAPHY) for row in table["_constraints"]
    )
    table = table.drop(columns=["_constraints", "_level"]).reset_index(drop=True)
    return TargetRows(table=table, constraints=constraints)


def configured_rows(rows: TargetRows, config: dict) -> TargetRows:
    """The rows ``config`` (a :func:`jaxcal.io.load_target_config` result) keeps (``ValueError``
    if none), through jaxcal's own rule matching."""
    from scipy import sparse

    from jaxcal.io import CalibrationPackage, apply_target_config

    table = rows.table.assign(_row=np.arange(len(rows.table)))
    stub = CalibrationPackage.create(sparse.csr_array((len(table), 0)), table, table["target_name"])
    kept = apply_target_config(stub, config).targets["_row"].to_numpy()
    return TargetRows(
        table=rows.table.iloc[kept].reset_index(drop=True), constraints=tuple(rows.constraints[i] for i in kept)
    )
