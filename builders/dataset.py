"""PolicyEngine-US microdata files: the H5 layout a build reads, a writer, and the entity structure.

A dataset is an HDF5 file in policyengine-core's ``TIME_PERIOD_ARRAYS`` layout: one group
per variable, one array per period inside it (``f["age"]["2024"]``). PolicyEngine needs,
for every period-less identity, ``person_id`` and, for each group entity ``E`` in
:data:`GROUP_ENTITIES`, ``E_id`` (one per entity) and ``person_E_id`` (each person's
entity). Everything else (``age``, ``employment_income``, ``state_fips``...) is an input
variable at its own entity. :func:`write_dataset_h5` writes such a file;
:func:`read_entity_structure` reads the id arrays a build needs and checks them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Collection, Mapping

import numpy as np

GROUP_ENTITIES = ("household", "tax_unit", "spm_unit", "family", "marital_unit")
"""PolicyEngine-US's group entities: each needs ``E_id`` and ``person_E_id`` arrays."""
REQUIRED_ARRAYS = ("person_id",) + tuple(
    name for entity in GROUP_ENTITIES for name in (f"{entity}_id", f"person_{entity}_id")
)


def write_dataset_h5(
    path: str | os.PathLike,
    variables: Mapping[str, np.ndarray],
    period: int | str,
    verify: Callable[[pathlib.Path], None] | None = None,
) -> pathlib.Path:
    """Write ``variables`` (name -> array at the variable's entity) for ``period`` as a
    policyengine-core ``TIME_PERIOD_ARRAYS`` H5 file, atomically (``verify``, given the written
    file before it takes ``path``'s name, may raise to keep it from there); return the path.

    Raises ``ValueError`` when an array :data:`REQUIRED_ARRAYS` names is missing.
    """
    from jaxcal.io import atomic_write

    missing = [name for name in REQUIRED_ARRAYS if name not in variables]
    if missing:
        raise ValueError(f"a PolicyEngine dataset needs the arrays {', '.join(missing)}")
    path = pathlib.Path(path)

    def write(file) -> None:
        import h5py

        with h5py.File(file, "w") as h5:
            for name, values in variables.items():
                values = np.asarray(values)
                if values.dtype.kind == "U":
                    values = values.astype("S")
                h5.create_group(name).create_dataset(str(period), data=values)

    atomic_write(path, write, verify=verify)
    return path


@dataclasses.dataclass(frozen=True)
class EntityStructure:
    """Who belongs to what, as positions: each array maps a member to its entity's index."""

    household_ids: np.ndarray
    """``household_id`` of each household, in the dataset's order."""
    person_household: np.ndarray
    """Index of each person's household."""
    person_entity: Mapping[str, np.ndarray]
    """For ``person``, ``tax_unit``, ``spm_unit`` (...): index of each person's entity."""
    entity_household: Mapping[str, np.ndarray]
    """For the same keys: index of each entity's household."""

    @property
    def n_households(self) -> int:
        return int(self.household_ids.size)

    @property
    def n_persons(self) -> int:
        return int(self.person_household.size)


def read_entity_structure(path: str | os.PathLike) -> EntityStructure:
    """The entity structure of the dataset at ``path``, checked.

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming the problem for a
    file that is not a dataset, lacks an id array, or has a person in an unknown entity
    or an entity whose persons live in several households.
    """
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path}")
    try:
        with h5py.File(path, "r") as h5:
            missing = [name for name in REQUIRED_ARRAYS if name not in h5]
            if missing:
                raise ValueError(f"dataset {path} lacks the array(s) {', '.join(missing)} that PolicyEngine needs")
            arrays = {name: _first_period(h5[name]) for name in REQUIRED_ARRAYS}
    except OSError as error:
        raise ValueError(f"dataset {path} is not a readable HDF5 file ({error})") from None
    n_persons = arrays["person_id"].size
    person_entity = {"person": np.arange(n_persons)}
    for entity in GROUP_ENTITIES:
        ids, members = arrays[f"{entity}_id"], arrays[f"person_{entity}_id"]
        if members.size != n_persons:
            raise ValueError(f"dataset {path}: person_{entity}_id has {members.size} entries for {n_persons} persons")
        person_entity[entity] = _positions(ids, members, f"{path}: person_{entity}_id")
    person_household = person_entity["household"]
    entity_household = {}
    for entity, member_of in person_entity.items():
        n_entities = n_persons if entity == "person" else arrays[f"{entity}_id"].size
        household = np.full(n_entities, -1)
        household[member_of] = person_household
        spans_households = np.zeros(n_entities, bool)
        np.logical_or.at(spans_households, member_of, household[member_of] != person_household)
        if spans_households.any() or (household < 0).any():
            raise ValueError(f"dataset {path}: every {entity} must hold persons of exactly one household")
        entity_household[entity] = household
    return EntityStructure(
        household_ids=arrays["household_id"],
        person_household=person_household,
        person_entity=person_entity,
        entity_household=entity_household,
    )


def _first_period(node) -> np.ndarray:
    import h5py

    if isinstance(node, h5py.Dataset):
        return node[()]
    return node[next(iter(node))][()]


def _positions(ids: np.ndarray, members: np.ndarray, what: str) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    found = np.searchsorted(ids, members, sorter=order).clip(0, ids.size - 1)
    positions = order[found]
    if ids.size == 0 or (ids[positions] != members).any():
        raise ValueError(f"{what} names an id that is not in the entity's id array")
    return positions


def dataset_period(path: str | os.PathLike) -> int:
    """The period of the dataset's arrays (the first period key of ``person_id``)."""
    import h5py

    with h5py.File(path, "r") as h5:
        node = h5["person_id"]
        if isinstance(node, h5py.Dataset):
            raise ValueError(f"dataset {path} has no periods; give the year explicitly")
        if not isinstance(node, h5py.Group):  # a named datatype: neither an array nor periods
            raise TypeError(f"dataset {path}: person_id is a {type(node).__name__}, not a group of periods")
        # h5py ships no annotations; pyright infers a group's member names as str | None (never None).
        return int(next(iter(node)))  # pyright: ignore[reportArgumentType]


def read_period_arrays(path: str | os.PathLike, names: Collection[str], period: int) -> dict[str, np.ndarray]:
    """The arrays of ``names`` the dataset holds for ``period`` (absent ones left out)."""
    import h5py

    found = {}
    with h5py.File(path, "r") as h5:
        for name in names:
            node = h5.get(name)
            if isinstance(node, h5py.Group) and str(period) in node:
                found[name] = np.asarray(node[str(period)])
    return found
