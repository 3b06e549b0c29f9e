"""PolicyEngine-US microdata + target database -> calibration package (policyengine-us-data's
``UnifiedMatrixBuilder``, with PolicyEngine run once per clone or once per state).

:func:`build_calibration_package` runs these stages, each timed in :class:`BuildReport`:

1. ``targets``: query and uprate the database's targets (:mod:`builders.target_db`), keep
   what a target config keeps, order rows national, state, district, then by variable
   and geographic id, and name them as policyengine-us-data does (:func:`target_name`).
2. ``geography``: clone the base households and draw their places (:mod:`builders.geography`).
3. ``simulate``: one ``policyengine_us.Simulation`` reused for every clone
   (:func:`compute_clone_values`: the clone's geography and take-up draws set, target
   amounts and constraint variables as the model computes them: exact) or for every state a
   clone lands in (:func:`compute_state_values`, policyengine-us-data's approximation: the
   amounts and, for take-up-affected variables, the amounts with every take-up input True).
   :func:`choose_simulation` picks the mode with fewer runs (``simulation="auto"``).
4. ``assemble`` (:func:`assemble_matrix`): per (variable, constraints) group, household values
   per clone or per state gathered into columns by each column's clone or state (per clone
   when take-up draws enter), scattered to the rows of the column's nation, state and
   district; nonzeros only.
5. ``package``: the ``jax.experimental.sparse.BCOO`` matrix, targets, names, initial weights,
   geography and provenance as a :class:`jaxcal.CalibrationPackage`.

Targets with ``reform_id > 0`` (tax expenditures, which need a reform simulation) are left
out and counted in the metadata; a variable PolicyEngine does not know leaves its rows empty
and is named in :attr:`BuildReport.unknown_variables`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataset import EntityStructure, dataset_period, read_entity_structure
from .geography import GeographyAssignment, assign_geography, equal_population_districts
from .takeup import ELIGIBILITY_INPUTS, TAKEUP_BY_VARIABLE, takes_up
from .target_db import GEO_LEVEL_ORDER, Constraint, policyengine_uprating_indices, read_targets, uprate_targets
from .target_values import household_values, person_mask

if TYPE_CHECKING:
    import pandas as pd
    from jax.experimental import sparse as jsparse

    from jaxcal import CalibrationPackage

TARGET_COLUMNS = ("target_id", "target_name", "variable", "geo_level", "geographic_id", "domain_variable", "value",
                  "original_value", "uprating_factor", "period", "source", "stratum_id")  # fmt: skip
"""The columns of a built package's targets table, in order."""
SIMULATION_MODES = ("auto", "per_clone", "per_state")
"""How the build runs PolicyEngine (:func:`choose_simulation`)."""
PLACE_VARIABLES = frozenset({"state_fips", "state_code", "congressional_district_geoid"})
"""Constraints a column's geography settles (policyengine-us-data's ``_GEO_VARS``)."""


@dataclasses.dataclass(frozen=True)
class TargetRows:
    """The matrix rows: the targets table and each row's non-geographic constraints."""

    table: pd.DataFrame
    """One row per target: the database's columns, ``geo_level``, ``geographic_id``,
    ``domain_variable`` and ``target_name``."""
    constraints: tuple[tuple[Constraint, ...], ...]


@dataclasses.dataclass
class StateValues:
    """PolicyEngine's results for all base households placed, in turn, in each of ``states``
    (per-state mode), or for each clone's households with the clone's geography and take-up
    draws (per-clone mode, ``per_clone`` True: row ``c`` is clone ``c``, ``eligible`` empty).

    Every array has one row per state (``states`` order) or clone and one column per entity."""

    states: np.ndarray
    amounts: dict[str, np.ndarray]
    """Target amounts at the variable's entity, with the dataset's own take-up (per state) or
    the clone's drawn take-up (per clone)."""
    person_values: dict[str, np.ndarray]
    """Constraint variables per person (numbers as float32, as policyengine-us-data compares them)."""
    eligible: dict[str, np.ndarray]
    """Take-up-affected variables with every take-up input True, at the variable's entity."""
    entities: dict[str, str]
    """The entity of every requested variable PolicyEngine knows."""
    declined: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Take-up-affected variables whose model can pay without take-up (``aca_ptc``: filers get
    the credit anyway), with their own take-up input False and the others True; a drawn
    non-taker gets this instead of 0."""
    per_clone: bool = False


@dataclasses.dataclass
class BuildReport:
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per stage, in order."""
    peak_memory_mb: float = 0.0
    """Peak resident memory of the process."""
    unknown_variables: list[str] = dataclasses.field(default_factory=list)
    reform_targets_skipped: int = 0


def target_name(variable: str, constraints: Sequence[Constraint]) -> str:
    """policyengine-us-data's row name: ``national`` or ``state_6`` / ``cd_601``, the variable,
    then ``[variable op value,...]`` for the other constraints, e.g. ``cd_601/person_count/[age<18]``."""
    places = [
        f"state_{c.value}" if c.variable == "state_fips" else f"cd_{c.value}"
        for c in constraints
        if c.variable in ("state_fips", "congressional_district_geoid")
    ]
    parts = ["/".join(places) or "national", variable]
    others = [str(c) for c in constraints if c.variable not in PLACE_VARIABLES]
    if others:
        parts.append("[" + ",".join(others) + "]")
    return "/".join(parts)


def plan_target_rows(targets: pd.DataFrame, constraints_by_stratum: Mapping[int, Sequence[Constraint]]) -> TargetRows:
    """Order ``targets`` (from :func:`builders.target_db.read_targets`) national, state, district,
    then by variable, reform and geographic id (ties keep database order) and name them."""
    table = targets.copy()
    stratum_constraints = [tuple(constraints_by_stratum.get(int(s), ())) for s in table["stratum_id"]]
    table["target_name"] = [target_name(v, c) for v, c in zip(table["variable"], stratum_constraints)]
    table["_constraints"] = stratum_constraints
    table["_level"] = table["geo_level"].map(GEO_LEVEL_ORDER)
    table = table.sort_values(["_level", "variable", "reform_id", "geographic_id"], kind="stable")
    constraints = tuple(
        tuple(c for c in row if c.variable not in PLACE_VARIABLES) for row in table["_constraints"]
    )
    return TargetRows(table=table.drop(columns=["_constraints", "_level"]).reset_index(drop=True), constraints=constraints)


def compute_state_values(
    simulation: Any,
    year: int,
    states: Sequence[int],
    amount_variables: Sequence[str],
    constraint_variables: Sequence[str],
    takeup_variables: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: None,
) -> StateValues:
    """Run ``simulation`` (a ``policyengine_us.Simulation`` on the base dataset) once per state.

    For each state: ``state_fips`` is set for every household and the computed arrays are
    dropped; amounts are calculated at their entity, constraint variables mapped to persons;
    then, for ``takeup_variables`` (keys of :data:`builders.takeup.TAKEUP_BY_VARIABLE`), every
    input of :data:`builders.takeup.ELIGIBILITY_INPUTS` is set True and those amounts
    calculated again (policyengine-us-data's eligible amounts). For a variable that the model
    does not gate on its take-up input (its ``defined_for`` is another variable, e.g.
    ``aca_ptc``), the amounts with that input False (the others True) are calculated as well
    (:attr:`StateValues.declined`), so a drawn non-taker gets what the model pays it, not 0.
    The dataset's own inputs are restored before the next state.
    """
    known = simulation.tax_benefit_system.variables
    wanted = set(amount_variables) | set(constraint_variables) | set(takeup_variables)
    entities = {v: known[v].entity.key for v in wanted if v in known}
    amount_variables = [v for v in amount_variables if v in entities]
    constraint_variables = [v for v in constraint_variables if v in entities]
    specs = [TAKEUP_BY_VARIABLE[v] for v in takeup_variables if v in entities]
    n_households = len(simulation.calculate("household_id", year))
    forced = [name for name in ELIGIBILITY_INPUTS if name in known] if specs else []
    dataset_takeup = {name: np.asarray(simulation.calculate(name, year)) for name in forced}
    amounts: dict[str, list] = {v: [] for v in amount_variables}
    person_values: dict[str, list] = {v: [] for v in constraint_variables}
    eligible: dict[str, list] = {s.variable: [] for s in specs}
    ungated = [s for s in specs if s.takeup_variable in dataset_takeup and not _gated_by_takeup(known[s.variable], s)]
    declined: dict[str, list] = {s.variable: [] for s in ungated}
    for i, state in enumerate(states):
        started = time.perf_counter()
        simulation.set_input("state_fips", year, np.full(n_households, state, np.int32))
        for name, values in dataset_takeup.items():
            simulation.set_input(name, year, values)
        _drop_computed(simulation)
        for variable in amount_variables:
            amounts[variable].append(_numbers(simulation.calculate(variable, year), np.float64))
        for variable in constraint_variables:
            person_values[variable].append(_numbers(simulation.calculate(variable, year, map_to="person"), np.float32))
        if specs:
            for name, values in dataset_takeup.items():
                simulation.set_input(name, year, np.ones(values.shape, bool))
            _drop_computed(simulation)
            for spec in specs:
                eligible[spec.variable].append(_numbers(simulation.calculate(spec.variable, year), np.float64))
            for spec in ungated:
                simulation.set_input(spec.takeup_variable, year, np.zeros(dataset_takeup[spec.takeup_variable].shape, bool))
                _drop_computed(simulation)
                declined[spec.variable].append(_numbers(simulation.calculate(spec.variable, year), np.float64))
                simulation.set_input(spec.takeup_variable, year, np.ones(dataset_takeup[spec.takeup_variable].shape, bool))
        log(f"  state {state} ({i + 1}/{len(states)}): {time.perf_counter() - started:.1f} s")
    for name, values in dataset_takeup.items():
        simulation.set_input(name, year, values)
    _drop_computed(simulation)
    return StateValues(
        states=np.asarray(states),
        amounts={v: np.stack(a) for v, a in amounts.items()},
        person_values={v: np.stack(a) for v, a in person_values.items()},
        eligible={v: np.stack(a) for v, a in eligible.items()},
        entities=entities,
        declined={v: np.stack(a) for v, a in declined.items()},
    )


def compute_clone_values(
    simulation: Any,
    year: int,
    geography: GeographyAssignment,
    structure: EntityStructure,
    amount_variables: Sequence[str],
    constraint_variables: Sequence[str],
    takeup_variables: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: None,
) -> StateValues:
    """Run ``simulation`` (a ``policyengine_us.Simulation`` on the base dataset) once per clone:
    every household in its clone's state and district (``block_geoid`` too when the geography
    has blocks), the take-up inputs of ``takeup_variables`` set to the clone's draws
    (:func:`builders.takeup.takes_up`, the salts :func:`builders.export.export_h5` uses), then
    amounts and constraint variables calculated as they are. This is what the exported
    dataset computes, so ``X @ w`` equals the weighted sums on the export exactly.
    """
    known = simulation.tax_benefit_system.variables
    wanted = set(amount_variables) | set(constraint_variables)
    entities = {v: known[v].entity.key for v in wanted if v in known}
    amount_variables = [v for v in amount_variables if v in entities]
    constraint_variables = [v for v in constraint_variables if v in entities]
    specs = [TAKEUP_BY_VARIABLE[v] for v in takeup_variables if TAKEUP_BY_VARIABLE[v].takeup_variable in known]
    n_base = structure.n_households
    if geography.n_base != n_base:
        raise ValueError(f"the geography has {geography.n_base} base records, the dataset {n_base} households")
    dataset_inputs = {name: np.asarray(simulation.calculate(name, year)) for name in _clone_inputs(known, geography, specs)}
    amounts: dict[str, list] = {v: [] for v in amount_variables}
    person_values: dict[str, list] = {v: [] for v in constraint_variables}
    for clone in range(geography.n_clones):
        started = time.perf_counter()
        columns = slice(clone * n_base, (clone + 1) * n_base)
        for name, values in _clone_geography(geography, columns).items():
            if name in dataset_inputs:
                simulation.set_input(name, year, values)
        for spec in specs:
            entity_household = structure.entity_household[spec.entity]
            drawn = takes_up(spec, structure.household_ids, entity_household, clone, geography.state_fips[columns])
            simulation.set_input(spec.takeup_variable, year, drawn)
        _drop_computed(simulation)
        for variable in amount_variables:
            amounts[variable].append(_numbers(simulation.calculate(variable, year), np.float64))
        for variable in constraint_variables:
            person_values[variable].append(_numbers(simulation.calculate(variable, year, map_to="person"), np.float32))
        log(f"  clone {clone + 1}/{geography.n_clones}: {time.perf_counter() - started:.1f} s")
    for name, values in dataset_inputs.items():
        simulation.set_input(name, year, values)
    _drop_computed(simulation)
    return StateValues(
        states=np.unique(geography.state_fips),
        amounts={v: np.stack(a) for v, a in amounts.items()},
        person_values={v: np.stack(a) for v, a in person_values.items()},
        eligible={},
        entities=entities,
        per_clone=True,
    )


def _clone_geography(geography: GeographyAssignment, columns: slice) -> dict[str, np.ndarray]:
    """The place inputs of a clone's households (what the export sets)."""
    places = {
        "state_fips": geography.state_fips[columns].astype(np.int32),
        "congressional_district_geoid": geography.cd_geoid[columns].astype(np.int32),
    }
    if geography.block_geoid is not None:
        places["block_geoid"] = np.asarray(geography.block_geoid[columns]).astype(str)
    return places


def _clone_inputs(known: Mapping[str, Any], geography: GeographyAssignment, specs: Sequence[Any]) -> list[str]:
    """The inputs a per-clone run sets (and restores afterwards)."""
    names = list(_clone_geography(geography, slice(0, 1))) + [s.takeup_variable for s in specs]
    return [name for name in names if name in known]


def _gated_by_takeup(variable: Any, spec: Any) -> bool:
    """Whether the model pays ``spec.variable`` only to takers: its ``defined_for`` is the
    take-up input (``snap``, ``ssi``), or it adds up nothing but that input
    (``medicaid_enrolled`` = eligible and takes up)."""
    return getattr(variable.defined_for, "name", variable.defined_for) == spec.takeup_variable or list(variable.adds or ()) == [spec.takeup_variable]


def choose_simulation(mode: str, n_clones: int, n_states: int) -> str:
    """``per_clone`` or ``per_state`` for ``mode`` (``auto``, ``per_clone`` or ``per_state``):
    ``auto`` runs per clone (exact) when there are no more clones than states the clones land
    in, since that is then also the fewer simulations, and per state otherwise
    (policyengine-us-data's approximation: take-up drawn on eligible amounts)."""
    mode = mode.replace("-", "_")
    if mode not in SIMULATION_MODES:
        raise ValueError(f"simulation must be one of {', '.join(SIMULATION_MODES)}, got {mode!r}")
    if mode == "auto":
        return "per_clone" if n_clones <= n_states else "per_state"
    return mode


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
    """
    n_base = structure.n_households
    if geography.n_base != n_base:
        raise ValueError(f"the geography has {geography.n_base} base records, the dataset {n_base} households")
    if values.per_clone:
        n_rows = next(iter(values.amounts.values() or values.person_values.values()), np.empty((geography.n_clones, 0))).shape[0]
        if n_rows != geography.n_clones:
            raise ValueError(f"the values hold {n_rows} clones, the geography {geography.n_clones}")
        state_row = np.arange(geography.n_columns) // n_base
    else:
        if not np.isin(geography.state_fips, values.states).all():
            raise ValueError("a column lies in a state without PolicyEngine values")
        state_row = np.searchsorted(values.states, geography.state_fips)
    columns_of = _columns_by_place(geography)
    assembler = _GroupValues(structure, values, geography, state_row, rerandomize_takeup)
    groups: dict[tuple[str, tuple[Constraint, ...]], list[int]] = {}
    for i, (variable, constraints) in enumerate(zip(rows.table["variable"], rows.constraints)):
        groups.setdefault((variable, constraints), []).append(i)
    parts_rows, parts_cols, parts_values = [], [], []
    levels, places = rows.table["geo_level"].tolist(), rows.table["geographic_id"].tolist()
    for (variable, constraints), group_rows in groups.items():
        if variable not in values.entities or any(c.variable not in values.entities for c in constraints):
            continue
        column_values = assembler.column_values(variable, constraints)
        for i in group_rows:
            level, place = levels[i], places[i]
            columns = columns_of[level].get(place if level == "national" else int(place), np.empty(0, np.int64))
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

    def __init__(self, structure: EntityStructure, values: StateValues, geography: GeographyAssignment,
                 state_row: np.ndarray, rerandomize_takeup: bool) -> None:  # fmt: skip
        self.structure, self.values, self.geography, self.state_row = structure, values, geography, state_row
        self.drawn = set(values.eligible) if rerandomize_takeup else set()
        self._takes_up: dict[tuple[str, int], np.ndarray] = {}

    def column_values(self, variable: str, constraints: tuple[Constraint, ...]) -> np.ndarray:
        n_base, n_clones = self.geography.n_base, self.geography.n_clones
        if self.drawn & ({variable} | {c.variable for c in constraints}):
            blocks = [
                self._household_values(variable, constraints, self.state_row[c * n_base : (c + 1) * n_base], c)
                for c in range(n_clones)
            ]
            return np.concatenate(blocks)
        n_rows = n_clones if self.values.per_clone else self.values.states.size
        per_state = np.stack(
            [self._household_values(variable, constraints, np.full(n_base, k), None) for k in range(n_rows)]
        )
        return per_state[self.state_row, np.tile(np.arange(n_base), n_clones)]

    def _household_values(self, variable: str, constraints: tuple[Constraint, ...], household_state: np.ndarray,
                          clone: int | None) -> np.ndarray:  # fmt: skip
        s = self.structure
        person_state = household_state[s.person_household]
        persons = np.arange(s.n_persons)
        person_values = {}
        for constraint in constraints:
            name = constraint.variable
            if clone is not None and name in self.drawn:
                entity = self.values.entities[name]
                person_values[name] = self._after_takeup(name, household_state, clone)[s.person_entity[entity]].astype(np.float32)
            else:
                person_values[name] = self.values.person_values[name][person_state, persons]
        qualifying = person_mask(person_values, constraints, s.n_persons)
        entity = self.values.entities[variable]
        if variable.endswith("_count"):
            amounts = None
        elif clone is not None and variable in self.drawn:
            amounts = self._after_takeup(variable, household_state, clone)
        else:
            entity_state = household_state[s.entity_household[entity]]
            amounts = self.values.amounts[variable][entity_state, np.arange(entity_state.size)]
        return household_values(qualifying, s.person_entity[entity], s.entity_household[entity], s.n_households, amounts)

    def _after_takeup(self, variable: str, household_state: np.ndarray, clone: int) -> np.ndarray:
        entity_household = self.structure.entity_household[self.values.entities[variable]]
        key = (variable, clone)
        if key not in self._takes_up:
            n_base = self.geography.n_base
            states = self.geography.state_fips[clone * n_base : (clone + 1) * n_base]
            spec = TAKEUP_BY_VARIABLE[variable]
            self._takes_up[key] = takes_up(spec, self.structure.household_ids, entity_household, clone, states)
        rows = household_state[entity_household], np.arange(entity_household.size)
        eligible = self.values.eligible[variable][rows]
        if variable in self.values.declined:
            return np.where(self._takes_up[key], eligible, self.values.declined[variable][rows])
        return eligible * self._takes_up[key]


def build_calibration_package(
    dataset: str | os.PathLike,
    db_path: str | os.PathLike,
    *,
    n_clones: int,
    seed: int,
    year: int | None = None,
    target_config: str | os.PathLike | None = None,
    rerandomize_takeup: bool = True,
    places: pd.DataFrame | None = None,
    simulation: str = "auto",
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> tuple[CalibrationPackage, BuildReport]:
    """Build the package for ``dataset`` (a PolicyEngine-US H5, see :mod:`builders.dataset`)
    and the targets of ``db_path`` at ``year`` (default: the dataset's period).

    ``places`` is the geography table of :func:`builders.geography.assign_geography` (default:
    :func:`builders.geography.equal_population_districts`, all 436 districts). Raises
    ``FileNotFoundError`` / ``ValueError`` naming the problem for a missing or malformed
    dataset or database and for a target config that keeps no target.

    ``simulation`` (:func:`choose_simulation`): ``per_clone`` runs PolicyEngine once per clone
    with the clone's geography and take-up draws (:func:`compute_clone_values`, exact: an
    export of the package reproduces ``X @ w``); ``per_state`` once per state, drawing take-up
    on eligible amounts (:func:`compute_state_values`); ``auto`` picks the one with fewer
    runs, per clone on ties. The metadata records the mode used (``simulation``).
    """
    import jaxcal

    if simulation.replace("-", "_") not in SIMULATION_MODES:
        raise ValueError(f"simulation must be one of {', '.join(SIMULATION_MODES)}, got {simulation!r}")

    report = BuildReport()
    clock = _StageClock(report, log)
    structure = read_entity_structure(dataset)
    year = int(year if year is not None else dataset_period(dataset))
    config = jaxcal.load_target_config(target_config) if target_config is not None else None
    with clock("targets"):
        targets, constraints = read_targets(db_path, year)
        report.reform_targets_skipped = int((targets["reform_id"] != 0).sum())
        targets = targets[targets["reform_id"] == 0]
        if targets.empty:
            raise ValueError(f"target database {db_path} holds no active baseline targets")
        rows = plan_target_rows(targets, constraints)
        if config is not None:
            rows = _apply_config(rows, config)
        log(f"  {len(rows.table)} targets")
    with clock("import policyengine_us"):
        from policyengine_us import Simulation

        model = Simulation(dataset=str(dataset))
        indices = policyengine_uprating_indices(model.tax_benefit_system.parameters)
        table = uprate_targets(rows.table, year, *indices)
        rows = TargetRows(table=table[list(TARGET_COLUMNS)], constraints=rows.constraints)
    with clock("geography"):
        if places is None:
            places = equal_population_districts()
        geography = assign_geography(structure.n_households, n_clones, places, seed)
    amount_variables = sorted({v for v in rows.table["variable"] if not v.endswith("_count")})
    constraint_variables = sorted({c.variable for row in rows.constraints for c in row})
    drawn = (set(amount_variables) | set(constraint_variables)) & TAKEUP_BY_VARIABLE.keys()
    takeup_variables = sorted(drawn) if rerandomize_takeup else []
    states = np.unique(geography.state_fips).tolist()
    mode = choose_simulation(simulation, n_clones, len(states))
    with clock("simulate"):
        log(f"  PolicyEngine {'once per clone' if mode == 'per_clone' else 'once per state'} ({mode})")
        if mode == "per_clone":
            values = compute_clone_values(model, year, geography, structure, amount_variables, constraint_variables,
                                          takeup_variables, log)  # fmt: skip
        else:
            values = compute_state_values(model, year, states, amount_variables, constraint_variables,
                                          takeup_variables, log)  # fmt: skip
        count_variables = {v for v in rows.table["variable"] if v.endswith("_count")}
        known = model.tax_benefit_system.variables
        values.entities.update({v: known[v].entity.key for v in count_variables if v in known})
        report.unknown_variables = sorted(
            (set(amount_variables) | set(constraint_variables) | count_variables) - values.entities.keys()
        )
        if report.unknown_variables:
            log(f"  warning: PolicyEngine-US does not know {', '.join(report.unknown_variables)}: their rows stay empty")
    with clock("assemble"):
        matrix = to_bcoo(*assemble_matrix(rows, geography, structure, values, rerandomize_takeup),
                         shape=(len(rows.table), geography.n_columns))  # fmt: skip
    with clock("package"):
        unweighted = jaxcal.CalibrationPackage.create(matrix, rows.table, rows.table["target_name"],
                                                      geography=geography.as_package_geography())  # fmt: skip
        initial_weights = jaxcal.policyengine_initial_weights(unweighted)
    report.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    package = jaxcal.CalibrationPackage(
        matrix=unweighted.matrix,
        targets=unweighted.targets,
        target_names=unweighted.target_names,
        initial_weights=initial_weights,
        geography=unweighted.geography,
        metadata=_provenance(dataset, db_path, target_config, year, n_clones, seed, structure, rerandomize_takeup, report)
        | {"simulation": mode, "takeup_inputs": [TAKEUP_BY_VARIABLE[v].takeup_variable for v in takeup_variables]},
    )
    return package, report


def to_bcoo(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> jsparse.BCOO:
    """The nonzeros as a ``jax.experimental.sparse.BCOO`` (int32 indices, float32 values)."""
    from jax.experimental import sparse as jsparse

    indices = np.stack([rows, columns], axis=1).astype(np.int32)
    return jsparse.BCOO((np.asarray(values, np.float32), indices), shape=shape)


def _apply_config(rows: TargetRows, config: dict) -> TargetRows:
    """The rows ``config`` keeps (``ValueError`` if none), through jaxcal's own rule matching."""
    import jaxcal
    from scipy import sparse

    table = rows.table.assign(_row=np.arange(len(rows.table)))
    stub = jaxcal.CalibrationPackage.create(sparse.csr_array((len(table), 0)), table, table["target_name"])
    kept = jaxcal.apply_target_config(stub, config).targets["_row"].to_numpy()
    return TargetRows(
        table=rows.table.iloc[kept].reset_index(drop=True), constraints=tuple(rows.constraints[i] for i in kept)
    )


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


def _drop_computed(simulation: Any) -> None:
    """Forget every computed array (and branch), so the next calculation sees new inputs."""
    simulation.branches.clear()
    simulation.drop_computed_arrays()


def _numbers(result: Any, dtype: type) -> np.ndarray:
    """A PolicyEngine result as ``dtype`` numbers, or as strings for enums and text."""
    if hasattr(result, "decode_to_str"):
        return np.asarray(result.decode_to_str()).astype(str)
    array = np.asarray(result)
    return array.astype(str) if array.dtype.kind in "OUS" else array.astype(dtype)


class _StageClock:
    """``with clock(name):`` times a stage into the report and logs it."""

    def __init__(self, report: BuildReport, log: Callable[[str], None]) -> None:
        self.report, self.log = report, log

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def stage():
            self.log(f"{name}...")
            started = time.perf_counter()
            yield
            self.report.stages[name] = round(time.perf_counter() - started, 3)
            self.log(f"{name}: {self.report.stages[name]:.2f} s")

        return stage()


def _provenance(dataset, db_path, target_config, year, n_clones, seed, structure, rerandomize_takeup, report) -> dict:
    from importlib import metadata

    from jaxcal._package import sha256_file

    def described(path):
        return None if path is None else {"path": str(pathlib.Path(path).resolve()), "sha256": sha256_file(path)}

    return {
        "builder": "builders.unified_matrix",
        "dataset": described(dataset),
        "db": described(db_path),
        "target_config": described(target_config),
        "year": year,
        "n_clones": n_clones,
        "n_base": structure.n_households,
        "seed": seed,
        "rerandomize_takeup": rerandomize_takeup,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jaxcal_version": metadata.version("jaxcal"),
        "policyengine_us_version": metadata.version("policyengine-us"),
        "stage_seconds": report.stages,
        "peak_memory_mb": round(report.peak_memory_mb, 1),
        "unknown_variables": report.unknown_variables,
        "reform_targets_skipped": report.reform_targets_skipped,
    }
