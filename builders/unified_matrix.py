"""PolicyEngine-US microdata + target database -> calibration package (policyengine-us-data's
``UnifiedMatrixBuilder``, with PolicyEngine run once per clone or once per state).

:func:`build_calibration_package` runs these stages, each timed in :class:`BuildReport`:

1. ``targets``: query the database's targets (:mod:`builders.target_db`), keep what a target
   config keeps, order and name the rows (:mod:`builders.target_rows`).
2. ``import policyengine_us``: load the model on the dataset (:mod:`builders.policyengine`,
   the only module that touches it) and uprate the targets by its CPI and population.
3. ``geography``: clone the base households and draw their places (:mod:`builders.geography`).
4. ``simulate`` (:mod:`builders.simulation`): one simulation reused for every clone (exact)
   or for every state a clone lands in (policyengine-us-data's approximation), whichever
   ``simulation`` asks for or, with ``auto``, needs fewer runs.
5. ``assemble`` (:mod:`builders.assembly`): the values scattered into a sparse matrix.
6. ``package``: the ``jax.experimental.sparse.BCOO`` matrix, targets, names, initial weights,
   geography and provenance as a :class:`jaxcal.io.CalibrationPackage`.

Targets with ``reform_id > 0`` are tax expenditures: the income tax their variable's repeal
would add (:func:`builders.simulation.compute_state_values`), named ``<variable>_expenditure``.
A variable PolicyEngine does not know leaves its rows empty and is named in
:attr:`BuildReport.unknown_variables`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import policyengine
from .assembly import assemble_matrix, to_bcoo
from .dataset import dataset_period, read_entity_structure, read_period_arrays
from .geography import assign_geography, forbes_fixed_states
from .real_targets import aca_ptc_state_factors, district_populations
from .runs import RunExecutor
from .simulation import (
    SIMULATION_MODES,
    choose_simulation,
    compute_clone_values,
    compute_state_values,
    expression_entities,
    known_entities,
)
from .takeup import REPORTS, TAKEUP_BY_VARIABLE, reported_takeup
from .target_db import district_agi_targets, read_targets, reconcile_districts, select_domains, uprate_targets
from .target_rows import RECONCILED_COLUMNS, TARGET_COLUMNS, TargetRows, configured_rows, plan_target_rows
from .target_values import components

if TYPE_CHECKING:
    import pandas as pd

    from jaxcal.io import CalibrationPackage


@dataclasses.dataclass
class BuildReport:
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per stage, in order."""
    peak_memory_mb: float = 0.0
    """Peak resident memory of the process."""
    unknown_variables: list[str] = dataclasses.field(default_factory=list)


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
    workers: int = 1,
    chunk_dir: str | os.PathLike | None = None,
    resume_chunks: bool = False,
    domain_variables: Sequence[str] | None = None,
    hierarchical_domains: Sequence[str] | None = None,
    county_level: bool = False,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> tuple[CalibrationPackage, BuildReport]:
    """Build the package for ``dataset`` (a PolicyEngine-US H5, see :mod:`builders.dataset`)
    and the targets of ``db_path`` at ``year`` (default: the dataset's period).

    ``places`` is the geography table of :func:`builders.geography.assign_geography` (default:
    the 436 districts at their ACS 2024 populations, :func:`builders.real_targets.district_populations`). Raises
    ``FileNotFoundError`` / ``ValueError`` naming the problem for a missing or malformed
    dataset or database and for a target config that keeps no target.

    ``simulation`` (:func:`builders.simulation.choose_simulation`): ``per_clone`` runs
    PolicyEngine once per clone with the clone's geography and take-up draws
    (:func:`builders.simulation.compute_clone_values`, exact: an export of the package
    reproduces ``X @ w``); ``per_state`` once per state, drawing take-up on eligible amounts
    (:func:`builders.simulation.compute_state_values`); ``auto`` picks the one with fewer
    runs, per clone on ties. The metadata records the mode used (``simulation``).

    ``workers``, ``chunk_dir`` and ``resume_chunks`` say where the PolicyEngine runs happen
    (:class:`builders.runs.RunExecutor`): on ``workers`` processes, each run's results written
    to ``chunk_dir`` as it ends, and with ``resume_chunks`` the runs found there read back
    instead of run. None of them changes the package: it is the same bits either way.

    ``domain_variables`` keeps only the targets whose ``domain_variable`` is one of them, before
    the target config (:func:`builders.target_db.select_domains`); ``hierarchical_domains``
    reconciles those domains' districts to their states after uprating
    (:func:`builders.target_db.reconcile_districts`, the ``aca_ptc`` domain with
    :func:`builders.real_targets.aca_ptc_state_factors`): policyengine-us-data's
    ``--domain-variables`` and ``--hierarchical-domains``. The metadata records both.

    ``county_level`` (policyengine-us-data's ``--county-level``; ``places`` must be blocks, whose
    GEOIDs hold the county) computes :data:`builders.simulation.COUNTY_VARIABLES` in each county
    a clone lands in, not in its state; an export of the package sets the clones' counties too.
    """
    if simulation.replace("-", "_") not in SIMULATION_MODES:
        raise ValueError(f"simulation must be one of {', '.join(SIMULATION_MODES)}, got {simulation!r}")
    if county_level and (places is None or "block_geoid" not in places.columns):
        raise ValueError("a county-level build needs a geography of blocks: the places have no block_geoid column")

    # Entered first, so that worker processes load the model while this one reads the targets and loads it.
    with RunExecutor(dataset, chunk_dir=chunk_dir, resume=resume_chunks, workers=workers) as execute:
        return _build(
            dataset,
            db_path,
            n_clones=n_clones,
            seed=seed,
            year=year,
            target_config=target_config,
            rerandomize_takeup=rerandomize_takeup,
            places=places,
            simulation=simulation,
            execute=execute,
            domain_variables=domain_variables,
            hierarchical_domains=hierarchical_domains,
            county_level=county_level,
            log=log,
        )


def _build(
    dataset,
    db_path,
    *,
    n_clones,
    seed,
    year,
    target_config,
    rerandomize_takeup,
    places,
    simulation,
    execute,
    domain_variables,
    hierarchical_domains,
    county_level,
    log,
) -> tuple[CalibrationPackage, BuildReport]:
    """:func:`build_calibration_package`'s stages, its PolicyEngine runs on ``execute``."""
    from jaxcal.io import CalibrationPackage, load_target_config, policyengine_initial_weights

    report = BuildReport()
    clock = _StageClock(report, log)
    structure = read_entity_structure(dataset)
    year = int(year if year is not None else dataset_period(dataset))
    config = load_target_config(target_config) if target_config is not None else None
    with clock("targets"):
        targets, constraints = read_targets(db_path, year)
        if targets.empty:
            raise ValueError(f"target database {db_path} holds no active targets")
        unvalued = targets.loc[targets["value"].isna(), "target_id"].tolist()
        if unvalued:  # PolicyEngine's schema allows a NULL value; no fit can aim at one
            shown = ", ".join(map(str, unvalued[:5])) + (", ..." if len(unvalued) > 5 else "")
            raise ValueError(
                f"target database {db_path}: the targets table's value is NULL for {len(unvalued)} active "
                f"target(s) (target_id {shown}); give them a value or set active = 0"
            )
        selected = targets
        if domain_variables:
            selected = select_domains(targets, domain_variables)
            if selected.empty:
                raise ValueError(
                    f"target database {db_path}: no active target has a domain_variable among "
                    f"{', '.join(domain_variables)}"
                )
        rows = plan_target_rows(selected, constraints)
        if config is not None:
            rows = configured_rows(rows, config)
        log(f"  {len(rows.table)} targets")
    with clock("import policyengine_us"):
        model = policyengine.load_simulation(dataset)
        table = uprate_targets(rows.table, year, *model.uprating_indices())
        constraints = rows.constraints
        if hierarchical_domains:
            table = reconcile_districts(
                table.assign(_row=np.arange(len(table))),
                hierarchical_domains,
                year,
                lambda domain: aca_ptc_state_factors(year) if domain == "aca_ptc" else None,
            )
            constraints = tuple(constraints[i] for i in table["_row"])
            reconciled = int(np.count_nonzero(table["hif"].notna()))
            log(
                f"  {', '.join(hierarchical_domains)}: {reconciled} district targets reconciled to their "
                f"states, {len(rows.table) - len(table)} national and state targets of other years dropped"
            )
        columns = [c for c in (*TARGET_COLUMNS, *RECONCILED_COLUMNS) if c in table]
        rows = TargetRows(table=table.loc[:, columns], constraints=constraints)
    with clock("geography"):
        if places is None:
            places = district_populations()
        # As policyengine-us-data's run_calibration: the top tenth of AGI leans to the districts
        # with the most AGI, and synthetic Forbes households stay in their state.
        district_agi = district_agi_targets(targets)
        forbes = read_period_arrays(dataset, ["forbes_state_fips"], year).get("forbes_state_fips")
        fixed_states = forbes_fixed_states(structure.household_ids, forbes)
        geography = assign_geography(
            structure.n_households,
            n_clones,
            places,
            seed,
            household_agi=model.calculate("adjusted_gross_income", year, map_to="household"),
            district_agi=district_agi,
            fixed_states=fixed_states,
        )
        n_fixed = 0 if fixed_states is None else int(np.count_nonzero(fixed_states))
        log(f"  top-AGI households drawn by {len(district_agi)} district AGI targets; {n_fixed} held to their state")
        counties = None
        if county_level:
            assert geography.county_fips is not None  # blocks, as build_calibration_package checked
            counties = policyengine.county_names(geography.county_fips.tolist())
            unknown = sorted(fips for fips, name in counties.items() if name == "UNKNOWN")
            log(f"  {len(counties)} counties" + (f"; the model knows none of {', '.join(unknown)}" if unknown else ""))
    expenditure = rows.table["reform_id"] > 0
    targeted = set(rows.table.loc[~expenditure, "variable"])
    expenditure_variables = sorted(set(rows.table.loc[expenditure, "variable"]))
    amount_variables = sorted({part for v in targeted if not v.endswith("_count") for part in components(v)})
    constraint_variables = sorted({c.variable for row in rows.constraints for c in row})
    drawn = (set(amount_variables) | set(constraint_variables)) & TAKEUP_BY_VARIABLE.keys()
    takeup_variables = sorted(drawn) if rerandomize_takeup else []
    reported = (
        reported_takeup(read_period_arrays(dataset, REPORTS, year), structure, str(dataset)) if takeup_variables else {}
    )
    states = np.unique(geography.state_fips).tolist()
    mode = choose_simulation(simulation, n_clones, len(states))
    with clock("simulate"):
        log(f"  PolicyEngine {'once per clone' if mode == 'per_clone' else 'once per state'} ({mode})")
        if mode == "per_clone":
            values = compute_clone_values(
                model,
                year,
                geography,
                structure,
                amount_variables,
                constraint_variables,
                takeup_variables,
                log,
                reported=reported,
                execute=execute,
                expenditure_variables=expenditure_variables,
                counties=counties,
            )
        else:
            values = compute_state_values(
                model,
                year,
                states,
                amount_variables,
                constraint_variables,
                takeup_variables,
                log,
                reported=reported,
                execute=execute,
                expenditure_variables=expenditure_variables,
                counties=counties,
            )
        count_variables = {part for v in targeted if v.endswith("_count") for part in components(v)}
        values.entities.update(known_entities(model, count_variables))
        values.entities.update(expression_entities(targeted, values.entities))
        report.unknown_variables = sorted(
            ((set(amount_variables) | set(constraint_variables) | count_variables) - values.entities.keys())
            | (set(expenditure_variables) - values.expenditures.keys())
        )
        if report.unknown_variables:
            unknown = ", ".join(report.unknown_variables)
            log(f"  warning: PolicyEngine-US does not know {unknown}: their rows stay empty")
    with clock("assemble"):
        matrix = to_bcoo(
            *assemble_matrix(rows, geography, structure, values, rerandomize_takeup),
            shape=(len(rows.table), geography.n_columns),
        )
    with clock("package"):
        unweighted = CalibrationPackage.create(
            matrix, rows.table, rows.table["target_name"], geography=geography.as_package_geography()
        )
        initial_weights = policyengine_initial_weights(unweighted)
    report.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metadata = _provenance(dataset, db_path, target_config, year, n_clones, seed, structure, rerandomize_takeup, report)
    metadata |= {
        "simulation": mode,
        "takeup_inputs": [TAKEUP_BY_VARIABLE[v].takeup_variable for v in takeup_variables],
        "domain_variables": list(domain_variables) if domain_variables else None,
        "hierarchical_domains": list(hierarchical_domains) if hierarchical_domains else None,
        "county_level": county_level,
        "district_agi_targets": len(district_agi),
        "fixed_state_households": n_fixed,
    }
    package = CalibrationPackage(
        matrix=unweighted.matrix,
        targets=unweighted.targets,
        target_names=unweighted.target_names,
        initial_weights=initial_weights,
        geography=unweighted.geography,
        metadata=metadata,
    )
    return package, report


class _StageClock:
    """``with clock(name):`` times a stage into the report and logs it."""

    def __init__(self, report: BuildReport, log: Callable[[str], None]) -> None:
        self.report, self.log = report, log

    def __call__(self, name: str):
        @contextlib.contextmanager
        def stage():
            self.log(f"{name}...")
            started = time.perf_counter()
            yield
            self.report.stages[name] = round(time.perf_counter() - started, 3)
            self.log(f"{name}: {self.report.stages[name]:.2f} s")

        return stage()


def _provenance(dataset, db_path, target_config, year, n_clones, seed, structure, rerandomize_takeup, report) -> dict:
    """The package metadata: its inputs (``{role}_path`` and ``{role}_sha256``, the schema
    ``jaxcal info`` reads), the settings, versions and the report."""
    from importlib import metadata

    from jaxcal.io import file_provenance

    return {
        "builder": "builders.unified_matrix",
        **file_provenance("dataset", dataset),
        **file_provenance("db", db_path),
        **file_provenance("target_config", target_config),
        "year": year,
        "n_clones": n_clones,
        "n_base_records": structure.n_households,
        "seed": seed,
        "rerandomize_takeup": rerandomize_takeup,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jaxcal_version": metadata.version("jaxcal"),
        "policyengine_us_version": policyengine.package_version(),
        "stage_seconds": report.stages,
        "peak_memory_mb": round(report.peak_memory_mb, 1),
        "unknown_variables": report.unknown_variables,
    }
