"""Assembly: the simulation stage's values (:class:`builders.simulation.StateValues`) as the
nonzeros of the targets x columns matrix (:func:`assemble_matrix`) and as a BCOO (:func:`to_bcoo`).

Per (variable, constraints) group, household values per clone or per state are gathered into
columns by each column's clone or state (per clone when take-up draws enter) and scattered to
the rows of the column's nation, state and district; nonzeros only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataset import EntityStructure
from .geography import GeographyAssignment
from .simulation import StateValues
from .takeup import ELIGIBLE_ONLY, TAKEUP_BY_VARIABLE, VOLUNTARY_FILING, files_voluntarily, takes_up
from .target_db import Constraint
from .target_rows import TargetRows
from .target_values import components, household_values, person_mask

if TYPE_CHECKING:
    from jax.experimental import sparse as jsparse


def assemble_matrix(
    rows: TargetRows,
    geography: GeographyAssignment,
    structure: EntityStructure,
    values: StateValues,
    rerandomize_takeup: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzeros ``(row, column, value)`` of the targets x columns matrix.

    Rows of one (variable, constraints) group share their per-household values; a district
    row takes the columns placed in that district, a state row its state's, a national row
    all. Draws enter (per clone) only for groups touching a variable in ``values.eligible``.
    A column takes the values of its state's row or, with ``values.per_clone``, its clone's.
    A tax-expenditure row (``reform_id > 0``) takes ``values.expenditures`` of its variable for
    the households with a qualifying member, without draws, as policyengine-us-data does.
    A variable in ``values.by_county`` (a county-level build) takes its amounts, and its
    eligible amounts under draws, from its column's county row; constraints stay per state.
    """
    n_base = structure.n_households
    if geography.n_base != n_base:
        raise ValueError(f"the geography has {geography.n_base} base records, the dataset {n_base} households")
    if values.per_clone:
        arrays = values.amounts.values() or values.person_values.values()
        n_rows = next(iter(arrays), np.empty((geography.n_clones, 0))).shape[0]
        if n_rows != geography.n_clones:
            raise ValueError(f"the values hold {n_rows} clones, the geography {geography.n_clones}")
        state_row = np.arange(geography.n_columns) // n_base
    else:
        if not np.isin(geography.state_fips, values.states).all():
            raise ValueError("a column lies in a state without PolicyEngine values")
        state_row = np.searchsorted(values.states, geography.state_fips)
    columns_of = _columns_by_place(geography)
    assembler = _GroupValues(structure, values, geography, state_row, rerandomize_takeup)
    groups: dict[tuple[str, tuple[Constraint, ...], bool], list[int]] = {}
    expenditure_rows = (rows.table["reform_id"] > 0).tolist()
    for i, key in enumerate(zip(rows.table["variable"], rows.constraints, expenditure_rows)):
        groups.setdefault(key, []).append(i)
    parts_rows, parts_cols, parts_values = [], [], []
    levels, places = rows.table["geo_level"].tolist(), rows.table["geographic_id"].tolist()
    for (variable, constraints, expenditure), group_rows in groups.items():
        known = values.expenditures if expenditure else values.entities
        if variable not in known or any(c.variable not in values.entities for c in constraints):
            continue
        column_values = (
            assembler.expenditure_values(variable, constraints)
            if expenditure
            else assembler.column_values(variable, constraints)
        )
        for i in group_rows:
            level, place = levels[i], places[i]
            columns = columns_of[level].get(_place_key(level, place), np.empty(0, np.int64))
            row_values = column_values[columns]
            nonzero = row_values != 0
            parts_rows.append(np.full(int(nonzero.sum()), i, np.int32))
            parts_cols.append(columns[nonzero].astype(np.int32))
            parts_values.append(row_values[nonzero].astype(np.float32))
    if not parts_rows:
        return np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32)
    return np.concatenate(parts_rows), np.concatenate(parts_cols), np.concatenate(parts_values)


class _GroupValues:
    """Per-column values of a (variable, constraints) group; caches take-up decisions per clone."""

    def __init__(
        self,
        structure: EntityStructure,
        values: StateValues,
        geography: GeographyAssignment,
        state_row: np.ndarray,
        rerandomize_takeup: bool,
    ) -> None:
        self.structure, self.values, self.geography, self.state_row = structure, values, geography, state_row
        self.drawn = set(values.eligible) if rerandomize_takeup else set()
        self._takes_up: dict[tuple[str, int], np.ndarray] = {}
        self.by_county = {variable for kind in values.by_county.values() for variable in kind}
        self.county_row = None
        if self.by_county:
            county_fips = geography.county_fips
            if county_fips is None or not np.isin(county_fips, values.counties).all():
                raise ValueError("a column lies in a county without PolicyEngine values")
            self.county_row = np.searchsorted(values.counties, county_fips)

    def column_values(self, variable: str, constraints: tuple[Constraint, ...]) -> np.ndarray:
        parts = components(variable)
        if len(parts) > 1:  # a sum's household values are the sum of its parts' (each with its take-up)
            return np.sum([self.column_values(part, constraints) for part in parts], axis=0)
        n_base, n_clones = self.geography.n_base, self.geography.n_clones
        constrained = {c.variable for c in constraints}
        # With any draws, a constraint on voluntary filing reads the clone's filing draws, as
        # policyengine-us-data's clones do.
        if (
            self.drawn & ({variable} | constrained)
            or (self.drawn and VOLUNTARY_FILING in constrained)
            or variable in self.by_county
        ):
            blocks = [
                self._household_values(
                    variable,
                    constraints,
                    self.state_row[c * n_base : (c + 1) * n_base],
                    c,
                    household_county=None
                    if self.county_row is None
                    else self.county_row[c * n_base : (c + 1) * n_base],
                )
                for c in range(n_clones)
            ]
            return np.concatenate(blocks)
        return self._by_state_row(lambda row: self._household_values(variable, constraints, row, None))

    def expenditure_values(self, variable: str, constraints: tuple[Constraint, ...]) -> np.ndarray:
        """A tax-expenditure row's per-column values: the household's expenditure where a
        member qualifies (constraints on the run's own values, no take-up draws)."""
        return self._by_state_row(lambda row: self._household_values(variable, constraints, row, None, True))

    def _by_state_row(self, household_values: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per column, ``household_values`` (of every household placed in one row of the values:
        a state, or a clone) at the column's row."""
        n_base, n_clones = self.geography.n_base, self.geography.n_clones
        n_rows = n_clones if self.values.per_clone else self.values.states.size
        per_state = np.stack([household_values(np.full(n_base, k)) for k in range(n_rows)])
        return per_state[self.state_row, np.tile(np.arange(n_base), n_clones)]

    def _household_values(
        self,
        variable: str,
        constraints: tuple[Constraint, ...],
        household_state: np.ndarray,
        clone: int | None,
        expenditure: bool = False,
        household_county: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per household, ``variable`` summed over its entities with a qualifying member;
        ``household_state`` (and ``household_county``) are each household's rows of the values."""
        s = self.structure
        person_state = household_state[s.person_household]
        persons = np.arange(s.n_persons)
        person_values = {}
        for constraint in constraints:
            name = constraint.variable
            if clone is not None and name in self.drawn:
                entity = self.values.entities[name]
                after_takeup = self._after_takeup(name, household_state, clone, household_county)
                person_values[name] = after_takeup[s.person_entity[entity]].astype(np.float32)
            elif clone is not None and name == VOLUNTARY_FILING and self.drawn:
                person_values[name] = self._files(clone)[s.person_entity["tax_unit"]].astype(np.float32)
            else:
                person_values[name] = self.values.person_values[name][person_state, persons]
        qualifying = person_mask(person_values, constraints, s.n_persons)
        entity = "household" if expenditure else self.values.entities[variable]
        if expenditure:
            amounts = self.values.expenditures[variable][household_state, np.arange(s.n_households)]
        elif variable.endswith("_count"):
            amounts = None
        elif clone is not None and variable in self.drawn:
            amounts = self._after_takeup(variable, household_state, clone, household_county)
        else:
            table, row = self._rows("amounts", variable, household_state, household_county)
            entity_row = row[s.entity_household[entity]]
            amounts = table[variable][entity_row, np.arange(entity_row.size)]
        members, households = s.person_entity[entity], s.entity_household[entity]
        return household_values(qualifying, members, households, s.n_households, amounts)

    def _rows(
        self, kind: str, variable: str, household_state: np.ndarray, household_county: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The ``kind`` values (``amounts``, ``eligible``, ``eligible_nonfiling``) ``variable`` is
        read from and each household's row there: its county's when they are by county."""
        by_county = self.values.by_county.get(kind, {})
        if household_county is not None and variable in by_county:
            return by_county, household_county
        return getattr(self.values, kind), household_state

    def _after_takeup(
        self, variable: str, household_state: np.ndarray, clone: int, household_county: np.ndarray | None = None
    ) -> np.ndarray:
        """The clone's eligible amounts of ``variable`` (a tax unit's as it files or not, by its
        voluntary-filing draw) times its drawn take-up, as policyengine-us-data's build does."""
        spec = TAKEUP_BY_VARIABLE[variable]
        entity_household = self.structure.entity_household[spec.entity]
        entities = np.arange(entity_household.size)
        table, row = self._rows("eligible", variable, household_state, household_county)
        eligible = table[variable][row[entity_household], entities]
        if variable in self.values.eligible_nonfiling:
            table, row = self._rows("eligible_nonfiling", variable, household_state, household_county)
            eligible = np.where(self._files(clone), eligible, table[variable][row[entity_household], entities])
        key = (variable, clone)
        if key not in self._takes_up:
            n_base = self.geography.n_base
            states = self.geography.state_fips[clone * n_base : (clone + 1) * n_base]
            self._takes_up[key] = takes_up(
                spec,
                self.structure.household_ids,
                entity_household,
                clone,
                states,
                reported=self.values.reported.get(spec.takeup_variable),
                eligible=eligible > 0 if variable in ELIGIBLE_ONLY else None,
            )
        return eligible * self._takes_up[key]

    def _files(self, clone: int) -> np.ndarray:
        """Whether each tax unit of ``clone`` would file unasked (drawn once per clone)."""
        key = (VOLUNTARY_FILING, clone)
        if key not in self._takes_up:
            tax_unit_household = self.structure.entity_household["tax_unit"]
            self._takes_up[key] = files_voluntarily(
                self.structure.household_ids, tax_unit_household, clone, self.values.filing_inputs
            )
        return self._takes_up[key]


def to_bcoo(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> jsparse.BCOO:
    """The nonzeros as a ``jax.experimental.sparse.BCOO`` (int32 indices, float32 values)."""
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    indices = np.stack([rows, columns], axis=1).astype(np.int32)
    # BCOO converts both with jnp.asarray itself; doing it here matches its (data, indices) annotation.
    return jsparse.BCOO((jnp.asarray(np.asarray(values, np.float32)), jnp.asarray(indices)), shape=shape)


def _place_key(level: str, place: str) -> Any:
    """A row's place as :func:`_columns_by_place` keys it: ``US``, or the state or district
    number, also of a Census UCGID (``0400000US06`` is state 6, ``5001800US0601`` district 601)."""
    if level == "national":
        return place
    return int(str(place).rpartition("US")[2])


def _columns_by_place(geography: GeographyAssignment) -> dict[str, dict[Any, np.ndarray]]:
    """Column indices of the nation (key ``US``), of each state and of each district."""

    def split(place: np.ndarray) -> dict[int, np.ndarray]:
        order = np.argsort(place, kind="stable")
        keys, starts = np.unique(place[order], return_index=True)
        return dict(zip(keys.tolist(), np.split(order, starts[1:])))

    return {
        "national": {"US": np.arange(geography.n_columns)},
        "state": split(geography.state_fips),
        "district": split(geography.cd_geoid),
    }
