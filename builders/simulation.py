"""The simulation stage: the model's values of every target and constraint variable for the
clones' households, in one of two modes (:func:`choose_simulation` picks one).

- per clone (:func:`compute_clone_values`, exact): one run per clone, with the clone's
  geography and take-up draws set, target amounts and constraint variables as the model
  computes them;
- per state (:func:`compute_state_values`, policyengine-us-data's approximation): one run
  per state a clone lands in, giving the amounts and, for take-up-affected variables, the
  amounts with every take-up input True (take-up is drawn on those at assembly).

With ``counties`` (policyengine-us-data's ``--county-level``), the county-dependent
variables (:data:`COUNTY_VARIABLES`) are taken per county, not per state: per state, one run
per county a clone lands in, ``county`` set; per clone, each clone's counties set.

Tax-expenditure targets (``reform_id > 0``) add, in either mode, each run again per
variable with that variable neutralized: the expenditure is the households' income tax
there less their income tax in the run itself (policyengine-us-data's repeal-based values).

Both reuse one :class:`builders.policyengine.Simulation` on the base dataset (the only way
they reach the model), restore the dataset's inputs when done, and return
:class:`StateValues` for :func:`builders.assembly.assemble_matrix`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .dataset import EntityStructure
from .geography import GeographyAssignment
from .runs import Calculation, RunExecutor, SimulationRun
from .takeup import ELIGIBILITY_INPUTS, TAKEUP_BY_VARIABLE, VOLUNTARY_FILING, takes_up
from .target_values import components

if TYPE_CHECKING:
    from .policyengine import Simulation

SIMULATION_MODES = ("auto", "per_clone", "per_state")
"""How the build runs PolicyEngine (:func:`choose_simulation`)."""
COUNTY_VARIABLES = ("aca_ptc", "housing_assistance")
"""The variables a county-level build takes per county (policyengine-us-data's
``COUNTY_DEPENDENT_VARS``: Marketplace rating areas and HUD rents follow the county)."""
LOS_ANGELES = ("06037", "90001")
"""Los Angeles County and the ZIP code its runs set: policyengine-us splits the county's
Marketplace rating areas by ZIP code, and policyengine-us-data places its households in 90001."""


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
    eligible_nonfiling: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Tax-unit take-up-affected variables with every take-up input True but voluntary filing
    False: what a tax unit that would not file unasked is eligible for."""
    filing_inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """The dataset's :data:`builders.takeup.FILING_INPUTS` per tax unit (voluntary filing's rate)."""
    reported: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """The dataset's reports of receipt per take-up input, at its entity (anchors of the draws)."""
    expenditures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per tax-expenditure variable, per household: income tax with the variable neutralized
    less income tax as it is (float32, as policyengine-us-data subtracts them)."""
    counties: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, "U5"))
    """The county FIPS codes of :attr:`by_county`'s rows (sorted; empty when not county level)."""
    by_county: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    """Per-state builds at county level: ``{"amounts" | "eligible" | "eligible_nonfiling":
    {variable: array}}`` as the state arrays, one row per county, for :data:`COUNTY_VARIABLES`."""
    per_clone: bool = False


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


def known_entities(simulation: Simulation, variables: Collection[str]) -> dict[str, str]:
    """The entity of each of ``variables`` the model knows."""
    return {v: simulation.variable_entities[v] for v in variables if v in simulation.variable_entities}


def expression_entities(variables: Collection[str], entities: Mapping[str, str]) -> dict[str, str]:
    """The entity of each additive target expression (``a+b``) whose parts ``entities`` knows:
    theirs, which must be one, as policyengine-us-data requires (a ``ValueError`` otherwise)."""
    found = {}
    for variable in variables:
        parts = components(variable)
        if len(parts) == 1 or any(part not in entities for part in parts):
            continue
        kinds = sorted({entities[part] for part in parts})
        if len(kinds) != 1:
            raise ValueError(
                f"the target variable {variable!r} adds variables of different entities ({', '.join(kinds)}); "
                "as in policyengine-us-data, a sum's parts must share one entity"
            )
        found[variable] = kinds[0]
    return found


def compute_state_values(
    simulation: Simulation,
    year: int,
    states: Sequence[int],
    amount_variables: Sequence[str],
    constraint_variables: Sequence[str],
    takeup_variables: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: None,
    reported: Mapping[str, np.ndarray] | None = None,
    execute: RunExecutor | None = None,
    expenditure_variables: Sequence[str] = (),
    counties: Mapping[str, str] | None = None,
) -> StateValues:
    """Run ``simulation`` (on the base dataset) once per state, as policyengine-us-data's
    ``build_matrix`` does.

    For each state: ``state_fips`` is set for every household, amounts are calculated at their
    entity and constraint variables mapped to persons, with the dataset's own take-up. Then, for
    ``takeup_variables`` (keys of :data:`builders.takeup.TAKEUP_BY_VARIABLE`), every input of
    :data:`builders.takeup.ELIGIBILITY_INPUTS` is set True and those amounts calculated again
    (the eligible amounts), and for the tax-unit ones once more with voluntary filing False.
    ``execute`` (:class:`builders.runs.RunExecutor`, default in turn here) runs the states; the
    dataset's inputs are restored after. ``reported`` (:func:`builders.takeup.reported_takeup`)
    is kept for the draws at assembly. ``expenditure_variables``: see :func:`_expenditure_runs`.

    ``counties`` (``{county FIPS: the model's county}``, policyengine-us-data's
    ``--county-level``) adds, for the :data:`COUNTY_VARIABLES` among the amounts and take-up
    variables, one run per county with the county's state and ``county`` set (and Los Angeles'
    ZIP code, :data:`LOS_ANGELES`): their amounts and eligible amounts, nonfiling ones too, in
    :attr:`StateValues.by_county`.
    """
    entities = known_entities(simulation, set(amount_variables) | set(constraint_variables) | set(takeup_variables))
    amount_variables = [v for v in amount_variables if v in entities]
    constraint_variables = [v for v in constraint_variables if v in entities]
    specs = [TAKEUP_BY_VARIABLE[v] for v in takeup_variables if v in entities]
    n_households = len(simulation.calculate("household_id", year))
    forced = [name for name in ELIGIBILITY_INPUTS if name in simulation.variable_entities] if specs else []
    forced_shapes = {name: simulation.calculate(name, year).shape for name in forced}
    base = _calculations(amount_variables, constraint_variables)
    takeup_passes = _takeup_passes(specs, forced_shapes)  # the same for every state
    runs = [
        SimulationRun(
            f"state_{state:02d}",
            f"state {state}",
            (({"state_fips": np.full(n_households, state, np.int32)}, base), *takeup_passes),
        )
        for state in states
    ]
    expenditure_variables = [v for v in expenditure_variables if v in simulation.variable_entities]
    execute = execute or RunExecutor()
    results = execute(simulation, year, _expenditure_runs(runs, expenditure_variables), log)
    stacked = _stacked(results[: len(runs)])
    county_amounts = [v for v in amount_variables if v in COUNTY_VARIABLES]
    county_specs = [spec for spec in specs if spec.variable in COUNTY_VARIABLES]
    filing_inputs = voluntary_filing_inputs(simulation, year) if specs else {}
    counties = counties or {}
    by_county, county_codes = {}, sorted(counties)
    if county_codes and (county_amounts or county_specs):
        # After the state runs: the county runs leave ``county`` an input (of its own values) of the base simulation.
        county_runs = [
            SimulationRun(
                f"county_{fips}",
                f"county {fips}",
                (
                    (
                        _county_inputs(simulation, fips, counties[fips], n_households),
                        _calculations(county_amounts, ()),
                    ),
                    *_takeup_passes(county_specs, forced_shapes),
                ),
            )
            for fips in county_codes
        ]
        by_county = _stacked(execute(simulation, year, county_runs, log))
    return StateValues(
        states=np.asarray(states),
        amounts=stacked.get("amounts", {}),
        person_values=stacked.get("person_values", {}),
        eligible=stacked.get("eligible", {}),
        entities=entities,
        eligible_nonfiling=stacked.get("eligible_nonfiling", {}),
        filing_inputs=filing_inputs,
        reported=dict(reported or {}),
        expenditures=_expenditures(results, len(runs), expenditure_variables),
        counties=np.asarray(county_codes if by_county else [], "U5"),
        by_county=by_county,
    )


def _takeup_passes(specs: Sequence, forced_shapes: Mapping[str, tuple[int, ...]]) -> list:
    """The passes after a run's first for the take-up ``specs``: every take-up input True, then
    (tax-unit ones) voluntary filing False, each calculating its eligible amounts."""
    passes = []
    if specs:
        eligible = tuple(Calculation(f"eligible/{s.variable}", s.variable) for s in specs)
        passes.append(({name: np.ones(shape, bool) for name, shape in forced_shapes.items()}, eligible))
    nonfiling = tuple(
        Calculation(f"eligible_nonfiling/{s.variable}", s.variable) for s in specs if s.entity == "tax_unit"
    )
    if nonfiling and VOLUNTARY_FILING in forced_shapes:
        passes.append(({VOLUNTARY_FILING: np.zeros(forced_shapes[VOLUNTARY_FILING], bool)}, nonfiling))
    return passes


def _county_inputs(simulation: Simulation, fips: str, name: str, n: int) -> dict[str, np.ndarray]:
    """The inputs that place ``n`` households in the county ``fips`` (the model's ``name``): its
    state, its county and, in Los Angeles County, its ZIP code."""
    inputs = {"state_fips": np.full(n, int(fips[:2]), np.int32), "county": np.full(n, name)}
    if fips == LOS_ANGELES[0] and "zip_code" in simulation.variable_entities:
        inputs["zip_code"] = np.full(n, LOS_ANGELES[1])
    return inputs


def voluntary_filing_inputs(simulation: Simulation, year: int) -> dict[str, np.ndarray]:
    """:data:`builders.takeup.FILING_INPUTS` of the dataset as it is: child dependents, wages
    (persons' ``employment_income`` added in float32, in person order) and head age per tax unit."""
    tax_unit_ids = simulation.calculate("tax_unit_id", year)
    order = np.argsort(tax_unit_ids, kind="stable")
    person_ids = simulation.calculate("tax_unit_id", year, map_to="person")
    person_tax_unit = order[np.searchsorted(tax_unit_ids, person_ids, sorter=order)]
    wages = np.zeros(tax_unit_ids.size, np.float32)
    np.add.at(wages, person_tax_unit, simulation.calculate("employment_income", year).astype(np.float32))
    return {
        "tax_unit_child_dependents": simulation.calculate("tax_unit_child_dependents", year),
        "tax_unit_wage_income": wages,
        "age_head": simulation.calculate("age_head", year),
    }


def compute_clone_values(
    simulation: Simulation,
    year: int,
    geography: GeographyAssignment,
    structure: EntityStructure,
    amount_variables: Sequence[str],
    constraint_variables: Sequence[str],
    takeup_variables: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: None,
    reported: Mapping[str, np.ndarray] | None = None,
    execute: RunExecutor | None = None,
    expenditure_variables: Sequence[str] = (),
    counties: Mapping[str, str] | None = None,
) -> StateValues:
    """Run ``simulation`` (on the base dataset) once per clone: every household in its clone's
    state and district (``block_geoid`` too when the geography has blocks), the take-up inputs
    of ``takeup_variables`` set to the clone's draws (:func:`builders.takeup.takes_up`, the
    salts :func:`builders.export.export_h5` uses), then amounts and constraint variables
    calculated as they are (``reported`` anchors the draws, :func:`builders.takeup.reported_takeup`).
    This is what the exported dataset computes, so ``X @ w`` equals the weighted sums on the
    export exactly. Unlike the per-state build, voluntary filing keeps the dataset's values and
    housing assistance's non-reporters are drawn among all SPM units, not the eligible only.
    ``execute`` and ``expenditure_variables`` as in :func:`compute_state_values` (the
    expenditures, too, with the clone's geography and draws). With ``counties`` (``{county
    FIPS: the model's county}``), every household's ``county`` is set too (and Los Angeles' ZIP
    code), as the export of a county-level package sets them.
    """
    entities = known_entities(simulation, set(amount_variables) | set(constraint_variables))
    amount_variables = [v for v in amount_variables if v in entities]
    constraint_variables = [v for v in constraint_variables if v in entities]
    specs = [
        TAKEUP_BY_VARIABLE[v]
        for v in takeup_variables
        if TAKEUP_BY_VARIABLE[v].takeup_variable in simulation.variable_entities
    ]
    n_base = structure.n_households
    if geography.n_base != n_base:
        raise ValueError(f"the geography has {geography.n_base} base records, the dataset {n_base} households")
    calculations = _calculations(amount_variables, constraint_variables)
    runs = []
    for clone in range(geography.n_clones):
        columns = slice(clone * n_base, (clone + 1) * n_base)
        places = _clone_geography(geography, columns, counties)
        inputs = {name: values for name, values in places.items() if name in simulation.variable_entities}
        for spec in specs:
            inputs[spec.takeup_variable] = takes_up(
                spec,
                structure.household_ids,
                structure.entity_household[spec.entity],
                clone,
                geography.state_fips[columns],
                reported=(reported or {}).get(spec.takeup_variable),
            )
        runs.append(SimulationRun(f"clone_{clone:06d}", f"clone {clone + 1}", ((inputs, calculations),)))
    expenditure_variables = [v for v in expenditure_variables if v in simulation.variable_entities]
    results = (execute or RunExecutor())(simulation, year, _expenditure_runs(runs, expenditure_variables), log)
    stacked = _stacked(results[: len(runs)])
    return StateValues(
        states=np.unique(geography.state_fips),
        amounts=stacked.get("amounts", {}),
        person_values=stacked.get("person_values", {}),
        eligible={},
        entities=entities,
        expenditures=_expenditures(results, len(runs), expenditure_variables),
        per_clone=True,
    )


EXPENDITURE_TAX = "income_tax"
"""The tax a tax expenditure is measured on (policyengine-us-data's: federal income tax)."""


def _expenditure_runs(runs: Sequence[SimulationRun], variables: Sequence[str]) -> list[SimulationRun]:
    """``runs`` and, for tax-expenditure ``variables``, the households' income tax added to each
    run's first pass, then each run's first pass again per variable with that variable
    neutralized, giving the income tax there: policyengine-us-data's repeal-based expenditure,
    taken (as it takes it) with the run's geography and the dataset's take-up in the per-state
    build, and with each clone's draws in the per-clone one."""
    if not variables:
        return list(runs)
    tax = Calculation(f"tax/{EXPENDITURE_TAX}", EXPENDITURE_TAX, "household", "float32")
    with_tax = [
        dataclasses.replace(run, passes=((run.passes[0][0], (*run.passes[0][1], tax)), *run.passes[1:])) for run in runs
    ]
    neutralized = [
        SimulationRun(
            f"{run.name}_without_{variable}",
            f"{run.label} without {variable}",
            ((run.passes[0][0], (Calculation(f"tax/{variable}", EXPENDITURE_TAX, "household", "float32"),)),),
            neutralized=variable,
        )
        for variable in variables
        for run in runs
    ]
    return with_tax + neutralized


def _expenditures(results: Sequence[Mapping[str, np.ndarray]], n_runs: int, variables: Sequence[str]) -> dict:
    """Per variable, the neutralized runs' income tax less the runs' own, run by run (float32)."""
    if not variables:
        return {}
    baseline = np.stack([r[f"tax/{EXPENDITURE_TAX}"] for r in results[:n_runs]])
    found = {}
    for k, variable in enumerate(variables):
        start = n_runs * (k + 1)
        found[variable] = np.stack([r[f"tax/{variable}"] for r in results[start : start + n_runs]]) - baseline
    return found


def _calculations(amount_variables: Sequence[str], constraint_variables: Sequence[str]) -> tuple[Calculation, ...]:
    """Amounts at their entity (float64); constraint variables per person (float32, as
    policyengine-us-data compares them)."""
    return tuple(Calculation(f"amounts/{v}", v) for v in amount_variables) + tuple(
        Calculation(f"person_values/{v}", v, "person", "float32") for v in constraint_variables
    )


def _stacked(results: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Runs' results (keys ``kind/variable``) stacked run by run: ``{kind: {variable: array}}``."""
    stacked: dict[str, dict[str, np.ndarray]] = {}
    for key in results[0] if results else ():
        kind, _, variable = key.partition("/")
        stacked.setdefault(kind, {})[variable] = np.stack([r[key] for r in results])
    return stacked


def _clone_geography(
    geography: GeographyAssignment, columns: slice, counties: Mapping[str, str] | None = None
) -> dict[str, np.ndarray]:
    """The place inputs of a clone's households (what the export sets); with ``counties``
    (``{county FIPS: the model's county}``) their ``county`` and ZIP code too."""
    blocks = None if geography.block_geoid is None else geography.block_geoid[columns]
    return place_inputs(geography.state_fips[columns], geography.cd_geoid[columns], blocks, counties)


def place_inputs(
    state_fips: np.ndarray,
    cd_geoid: np.ndarray,
    block_geoid: np.ndarray | None,
    counties: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """The place inputs of households in these states, districts and blocks: ``state_fips``,
    ``congressional_district_geoid``, ``block_geoid`` and, with ``counties`` (``{county FIPS:
    the model's county}``), ``county`` and (:data:`LOS_ANGELES`) ``zip_code``."""
    places = {
        "state_fips": np.asarray(state_fips).astype(np.int32),
        "congressional_district_geoid": np.asarray(cd_geoid).astype(np.int32),
    }
    if block_geoid is not None:
        places["block_geoid"] = np.asarray(block_geoid).astype(str)
        if counties:
            fips = places["block_geoid"].astype("U5")
            places["county"] = np.asarray([counties[f] for f in fips.tolist()], dtype=str)
            places["zip_code"] = np.where(fips == LOS_ANGELES[0], LOS_ANGELES[1], "UNKNOWN")
    return places
