"""Calibrated H5 outputs (policyengine-us-data's local-area ``build_h5``): ``jaxcal export``.

From a package, the base dataset it was built from and fitted weights, write a PolicyEngine
dataset holding one household per kept column (weight > 0, optionally only some states or
districts): the base household's persons and entities copied, ids re-indexed 0..n-1 per
entity, the column's geography set (``state_fips``, ``congressional_district_geoid``,
``block_geoid`` when the package has it), take-up drawn with the matrix build's salts
(:func:`builders.takeup.takes_up`, per (variable, household id, clone), for the take-up
variables the build drew) and ``household_weight`` the column's weight. Summing
``calculate(variable) * household_weight`` over the file then reproduces ``X @ w``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from builders.dataset import GROUP_ENTITIES, EntityStructure, read_entity_structure, write_dataset_h5
from builders.h5_check import check_h5, read_h5_arrays
from builders.simulation import place_inputs
from builders.takeup import TAKEUP_BY_VARIABLE, reported_takeup, takes_up

ENTITIES = ("person",) + GROUP_ENTITIES
GEOGRAPHY_INPUTS = (
    "state_fips",
    "congressional_district_geoid",
    "block_geoid",
    "state_code",
    "state_name",
    "county_fips",
    "county",
    "zip_code",
    "tract_geoid",
    "cbsa_code",
    "place_fips",
    "sldu",
    "sldl",
    "puma",
    "zcta",
    "vtd",
    "in_nyc",
)
"""Inputs that place a household: the base dataset's are dropped, the column's geography is set."""


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    path: pathlib.Path
    n_households: int
    n_persons: int
    weight_sum: float
    takeup_variables: tuple[str, ...]
    """The take-up inputs drawn per clone (empty when the build kept the dataset's)."""


def export_h5(
    package: Any,
    weights: np.ndarray,
    output: str | os.PathLike,
    *,
    dataset: str | os.PathLike | None = None,
    states: Sequence[int] | None = None,
    districts: Sequence[int] | None = None,
    variable_entities: Mapping[str, str] | None = None,
) -> ExportSummary:
    """Write the calibrated dataset of ``package`` (a :class:`jaxcal.io.CalibrationPackage`) and
    ``weights`` (one per column) to ``output``; return what was written.

    ``dataset`` defaults to the package's ``dataset_path``; ``states`` (FIPS codes) or
    ``districts`` (GEOIDs) keep only those places. ``variable_entities`` (variable -> entity)
    settles arrays whose length fits several entities; without it the entity is inferred
    from the length and, when that is ambiguous and matters, from policyengine_us.
    Raises ``ValueError`` naming the problem (weights of the wrong length or negative, a
    package without geography, a dataset of another size, nothing left to export).
    """
    metadata = dict(package.metadata)
    if dataset is None:
        dataset = metadata.get("dataset_path")
        if dataset is None:
            raise ValueError("the package does not name its dataset; give it (jaxcal export --dataset PATH)")
    weights = np.asarray(weights, np.float64).ravel()
    if weights.shape != (package.n_records,):
        raise ValueError(f"weights must have one entry per column ({package.n_records}), got {weights.size}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative")
    geography = package.geography
    if "state_fips" not in geography or "cd_geoid" not in geography:
        raise ValueError("the package has no per-column geography (state_fips, cd_geoid): nothing places the clones")
    structure = read_entity_structure(dataset)
    n_base = structure.n_households
    if package.n_records % n_base:
        raise ValueError(
            f"the package's {package.n_records} columns are not clones of the dataset's {n_base} households"
        )

    state_fips = np.asarray(geography["state_fips"]).astype(np.int64)
    cd_geoid = np.asarray(geography["cd_geoid"]).astype(np.int64)
    keep = weights > 0
    if states is not None:
        keep &= np.isin(state_fips, np.asarray(states, np.int64))
    if districts is not None:
        keep &= np.isin(cd_geoid, np.asarray(districts, np.int64))
    columns = np.flatnonzero(keep)
    if columns.size == 0:
        raise ValueError("no column has a positive weight in the places asked for: nothing to export")
    clone, base = np.divmod(columns, n_base)

    (period, arrays), *others = read_h5_arrays(dataset).items()
    if others:
        raise ValueError(f"dataset {dataset} holds several periods; export reads one")
    gathers = {entity: _entity_gather(structure, entity, base) for entity in ENTITIES}
    out: dict[str, np.ndarray] = {}
    for entity, (index, _) in gathers.items():
        out[f"{entity}_id"] = np.arange(index.size, dtype=np.int32)
    for entity in GROUP_ENTITIES:
        out[f"person_{entity}_id"] = _person_links(structure, entity, base, gathers).astype(np.int32)
    skip = set(out) | set(GEOGRAPHY_INPUTS) | {v for v in arrays if v.endswith("_weight")}
    entity_of = _entities_of({v: a for v, a in arrays.items() if v not in skip}, structure, gathers, variable_entities)
    for name, entity in entity_of.items():
        out[name] = arrays[name][gathers[entity][0]]
    blocks = np.asarray(geography["block_geoid"])[columns].astype(str) if "block_geoid" in geography else None
    counties = None
    if metadata.get("county_level") and blocks is not None:  # as the build's runs placed them
        from builders.policyengine import county_names

        counties = county_names(blocks.astype("U5").tolist())
    places = place_inputs(state_fips[columns], cd_geoid[columns], blocks, counties)
    out |= places
    drawn = _drawn_takeup(package) if metadata.get("rerandomize_takeup", True) else []
    reported = reported_takeup(arrays, structure, str(dataset)) if drawn else {}
    for spec in drawn:
        gather = gathers[spec.entity]
        out[spec.takeup_variable] = _takeup(spec, structure, clone, gather, state_fips, reported)
    out["household_weight"] = weights[columns].astype(np.float32)

    def verify(written: pathlib.Path) -> None:
        """check-h5 on the file before it takes ``output``'s name: a failing export is never left there."""
        failures = check_h5(written, {**entity_of, **dict.fromkeys(places, "household")})
        if failures:  # a bug here, not a user mistake: say so loudly
            raise RuntimeError(f"the export fails check-h5, so {output} was not written: {'; '.join(failures)}")

    path = write_dataset_h5(output, out, period or metadata.get("year", 2024), verify=verify)
    return ExportSummary(
        path=pathlib.Path(path),
        n_households=int(columns.size),
        n_persons=int(out["person_id"].size),
        weight_sum=float(weights[columns].sum()),
        takeup_variables=tuple(s.takeup_variable for s in drawn),
    )


def _entity_gather(structure: EntityStructure, entity: str, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the households ``base`` (with repeats, in column order): the base index of every
    entity of each, households in order and entities in dataset order; and where each
    column's entities start in that list."""
    household = structure.entity_household[entity]
    order = np.argsort(household, kind="stable")
    counts = np.bincount(household, minlength=structure.n_households)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sizes = counts[base]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    within = np.arange(sizes.sum()) - np.repeat(starts, sizes)
    return order[np.repeat(first[base], sizes) + within], starts


def _person_links(
    structure: EntityStructure, entity: str, base: np.ndarray, gathers: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Each exported person's new ``entity`` index: its column's first entity plus the rank
    of its base entity within the household."""
    household = structure.entity_household[entity]
    order = np.argsort(household, kind="stable")
    rank = np.empty(household.size, np.int64)
    counts = np.bincount(household, minlength=structure.n_households)
    rank[order] = np.arange(household.size) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    persons, person_starts = gathers["person"]
    person_column = np.repeat(np.arange(base.size), np.diff(np.append(person_starts, persons.size)))
    _, entity_starts = gathers[entity]
    return entity_starts[person_column] + rank[structure.person_entity[entity][persons]]


def _entities_of(arrays, structure, gathers, variable_entities) -> dict[str, str]:
    counts = {e: structure.entity_household[e].size for e in ENTITIES}
    entity_of, unsure = {}, []
    for name, values in arrays.items():
        if variable_entities is not None and name in variable_entities:
            entity_of[name] = variable_entities[name]
            continue
        fits = [e for e in ENTITIES if counts[e] == values.shape[0]]
        if not fits:
            raise ValueError(f"dataset array {name} has {values.shape[0]} entries, matching no entity")
        # Entities of equal size whose exported selection is the same need no decision.
        if all(np.array_equal(gathers[e][0], gathers[fits[0]][0]) for e in fits[1:]):
            entity_of[name] = fits[0]
        else:
            unsure.append(name)
    if unsure:
        from builders import policyengine

        known = policyengine.variable_entities()
        for name in unsure:
            if name not in known:
                raise ValueError(f"cannot tell the entity of dataset array {name}: give variable_entities")
            entity_of[name] = known[name]
    return entity_of


def _drawn_takeup(package) -> list:
    """The take-up specs the matrix build drew: those its metadata names (``takeup_inputs``)
    or, for a package without them, those of target or constraint variables."""
    recorded = package.metadata.get("takeup_inputs")
    if recorded is not None:
        return [spec for spec in TAKEUP_BY_VARIABLE.values() if spec.takeup_variable in set(recorded)]
    targets = package.targets
    names = set(targets["variable"])
    if "domain_variable" in targets:
        names |= {v for d in targets["domain_variable"].dropna() for v in str(d).split(",")}
    return [TAKEUP_BY_VARIABLE[v] for v in sorted(names & TAKEUP_BY_VARIABLE.keys())]


def _takeup(
    spec,
    structure: EntityStructure,
    clone: np.ndarray,
    gather: tuple[np.ndarray, np.ndarray],
    state_fips: np.ndarray,
    reported: Mapping[str, np.ndarray],
) -> np.ndarray:
    """``spec``'s take-up for every exported entity, as the build drew it: over each whole clone
    (the reported anchors count a clone's entities together), then the exported entities'."""
    index, starts = gather
    entity_clone = np.repeat(clone, np.diff(np.append(starts, index.size)))
    n_base = structure.n_households
    result = np.zeros(index.size, bool)
    for c in np.unique(clone):
        decisions = takes_up(
            spec,
            structure.household_ids,
            structure.entity_household[spec.entity],
            int(c),
            state_fips[c * n_base : (c + 1) * n_base],
            reported=reported.get(spec.takeup_variable),
        )
        mine = entity_clone == c
        result[mine] = decisions[index[mine]]
    return result


def _codes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        from jaxcal.cli import CommandError

        raise CommandError(f"expected comma-separated numbers, got {text!r}") from None


def run_export(args) -> int:
    """``jaxcal export PACKAGE WEIGHTS OUTPUT``: print what was written."""
    from jaxcal.cli import CommandError
    from jaxcal.io import check_inputs_spared, check_writable, load_package

    package = load_package(args.package)
    dataset = args.dataset or package.metadata.get("dataset_path")
    check_inputs_spared([args.output], {"PACKAGE": args.package, "WEIGHTS": args.weights, "the dataset": dataset})
    if args.output.is_dir():
        raise CommandError(f"the output {args.output} is a directory; name the .h5 file")
    check_writable(args.output.parent)  # before the export's work, not after
    if not args.weights.is_file():
        raise CommandError(f"weights not found: {args.weights}")
    weights = np.load(args.weights, allow_pickle=False)
    summary = export_h5(
        package,
        weights,
        args.output,
        dataset=args.dataset,
        states=_codes(args.states),
        districts=_codes(args.districts),
    )
    print(
        f"wrote {summary.path}: {summary.n_households} households, {summary.n_persons} persons, "
        f"weight sum {summary.weight_sum:,.0f}; take-up drawn: {', '.join(summary.takeup_variables) or 'none'}"
    )
    return 0


def register_export(subparsers) -> None:
    """Add ``export PACKAGE WEIGHTS OUTPUT`` to the ``jaxcal`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="write a calibrated PolicyEngine H5 from a package and its weights",
        description="Write the records with weight > 0 (optionally of some states or districts) as a "
        "PolicyEngine-US dataset: ids re-indexed, each clone's geography and take-up set, "
        "household_weight the fitted weight.",
    )
    parser.add_argument("package", type=pathlib.Path, help="calibration package (.npz)")
    parser.add_argument("weights", type=pathlib.Path, help="fitted weights (.npy, one per column)")
    parser.add_argument("output", type=pathlib.Path, help="H5 file to write")
    parser.add_argument("--dataset", type=pathlib.Path, help="base dataset (default: the one the package names)")
    parser.add_argument("--states", help="only these state FIPS codes, comma-separated")
    parser.add_argument("--districts", help="only these district GEOIDs (state FIPS * 100 + number), comma-separated")
    parser.set_defaults(run=run_export)
