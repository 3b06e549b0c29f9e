"""``jaxcal check-h5 FILE``: is an H5 file a dataset ``policyengine_us`` can load and weight?

Checks, for every period the file holds (PolicyEngine's time-period layout
``/<variable>/<period>``; a flat file of arrays is one period ``""``):

- every entity id array (``person_id``, ``household_id``, ``tax_unit_id``, ``spm_unit_id``,
  ``family_id``, ``marital_unit_id``) and person membership array (``person_<entity>_id``)
  is present, one-dimensional and integer-valued; ids are unique;
- every membership points at an existing group, and every group has a member;
- ``household_weight`` is present; every ``*_weight`` array is finite and non-negative;
- no numeric array holds NaN or infinity;
- every array's length is the count of its entity (given ``variable_entities``) or, without
  it, of some entity.

Failures are returned as a list of one-line messages; the command prints them and exits 1.
Reading is cheap (h5py only); ``--policyengine`` also checks each variable's entity against
``policyengine_us``'s own definitions (:func:`builders.policyengine.variable_entities`, slow:
imports the model).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

GROUP_ENTITIES = ("household", "tax_unit", "spm_unit", "family", "marital_unit")
ENTITIES = ("person",) + GROUP_ENTITIES
EXIT_FAILED = 1
MAX_EXPANSION = 4096
"""How many times the bytes it stores a dataset may declare (gzip reaches about 1,000) before it
is refused unread; datasets under 1 MiB are read whatever they store."""


def read_h5_arrays(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{period: {variable: array}}`` from a PolicyEngine H5 (time-period groups or flat arrays).

    Raises ``ValueError`` when the file is missing, is not HDF5, holds a link to nothing, or holds
    a dataset that declares far more than it stores (a damaged or hostile file: reading it could
    exhaust memory).
    """
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 file ({error})") from None
    periods: dict[str, dict[str, np.ndarray]] = {}
    with h5:
        for name, item in h5.items():
            _check_link(h5, name, item, path)
            if isinstance(item, h5py.Dataset):
                periods.setdefault("", {})[name] = _read(item, path)
            elif isinstance(item, h5py.Group):
                for period, dataset in item.items():
                    _check_link(item, period, dataset, path)
                    if isinstance(dataset, h5py.Dataset):
                        periods.setdefault(str(period), {})[name] = _read(dataset, path)
    return periods


def _check_link(group: Any, name: str, item: Any, path: pathlib.Path) -> None:
    """``ValueError`` if ``group[name]`` (``item``, None when it resolves to nothing) is a soft or
    external link to nothing."""
    import h5py

    if item is None:
        link = group.get(name, getlink=True)
        target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
        raise ValueError(f"{path}: {group.name.rstrip('/')}/{name} is a link to nothing ({target})")


def _read(dataset: Any, path: pathlib.Path) -> np.ndarray:
    """``dataset``'s values, unless it declares many times more than it stores (``ValueError``)."""
    nbytes = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if nbytes > max(MAX_EXPANSION * stored, 1 << 20):
        raise ValueError(
            f"{path}: {dataset.name} declares {dataset.size:,} entries ({nbytes:,} bytes) but stores "
            f"{stored:,} bytes; not read"
        )
    return dataset[()]


def check_h5(path: str | os.PathLike, variable_entities: Mapping[str, str] | None = None) -> list[str]:
    """Every way the H5 at ``path`` fails to be a loadable, weightable PolicyEngine dataset.

    ``variable_entities`` maps variable names to entity keys (``person``, ``household`` ...)
    for an exact length check; without it an array must match some entity's count.
    An empty list means the file passed.
    """
    try:
        periods = read_h5_arrays(path)
    except (ValueError, FileNotFoundError) as error:
        return [str(error)]
    if not periods:
        return [f"{path} holds no arrays"]
    failures: list[str] = []
    # Ids hold for ETERNITY: PolicyEngine reads them from the first period that has them.
    id_period = next((p for p, arrays in periods.items() if "person_id" in arrays), next(iter(periods)))
    ids = periods[id_period]
    failures += _check_ids(ids)
    counts = {e: len(ids[f"{e}_id"]) for e in ENTITIES if f"{e}_id" in ids and np.ndim(ids[f"{e}_id"]) == 1}
    if "household_weight" not in {v for arrays in periods.values() for v in arrays}:
        failures.append("household_weight is missing: the records have no weights")
    for period, arrays in periods.items():
        where = f" ({period})" if period else ""
        for name, values in arrays.items():
            failures += [f"{name}{where}: {m}" for m in _check_array(name, values, counts, variable_entities)]
    return failures


def _check_ids(arrays: Mapping[str, np.ndarray]) -> list[str]:
    failures = []
    for entity in ENTITIES:
        name = f"{entity}_id"
        if name not in arrays:
            failures.append(f"{name} is missing")
            continue
        ids = arrays[name]
        if ids.ndim != 1 or not _integral(ids):
            failures.append(f"{name} must be a one-dimensional integer array, got {ids.dtype} of shape {ids.shape}")
            continue
        n_unique = np.unique(ids).size
        if n_unique != ids.size:
            failures.append(f"{name} has {ids.size - n_unique} duplicate id(s)")
        if ids.size == 0:
            failures.append(f"{name} is empty: the file has no {entity} records")
    persons = arrays.get("person_id")
    if persons is not None and persons.ndim != 1:
        persons = None  # reported above; the links are checked against no count
    for entity in GROUP_ENTITIES:
        name = f"person_{entity}_id"
        if name not in arrays:
            failures.append(f"{name} is missing")
            continue
        links = arrays[name]
        if links.ndim != 1 or not _integral(links):
            failures.append(f"{name} must be a one-dimensional integer array, got {links.dtype} of shape {links.shape}")
            continue
        if persons is not None and links.shape != persons.shape:
            failures.append(f"{name} has {links.size} entries but there are {persons.size} persons")
            continue
        groups = arrays.get(f"{entity}_id")
        if groups is None or groups.ndim != 1 or not _integral(groups):
            continue
        dangling = ~np.isin(links, groups)
        if dangling.any():
            failures.append(
                f"{name}: {int(dangling.sum())} person(s) point at no {entity} (e.g. {entity}_id {links[dangling][0]})"
            )
        empty = ~np.isin(groups, links)
        if empty.any():
            failures.append(f"{entity}_id: {int(empty.sum())} {entity}(s) have no members (e.g. id {groups[empty][0]})")
    return failures


def _check_array(
    name: str, values: np.ndarray, counts: Mapping[str, int], variable_entities: Mapping[str, str] | None
) -> list[str]:
    failures = []
    if values.ndim != 1:
        return [f"must be one-dimensional, got shape {values.shape}"]
    if values.dtype.kind in "fc":
        bad = ~np.isfinite(values)
        if bad.any():
            failures.append(f"{int(bad.sum())} NaN or infinite value(s)")
    if name.endswith("_weight") and values.dtype.kind in "biuf":
        negative = values < 0
        if negative.any():
            failures.append(f"{int(negative.sum())} negative weight(s)")
    entity = _entity_of(name, variable_entities)
    if entity is not None:
        if entity in counts and values.size != counts[entity]:
            failures.append(f"has {values.size} entries but there are {counts[entity]} {entity} records")
    elif counts and values.size not in counts.values():
        sizes = ", ".join(f"{e} {c}" for e, c in counts.items())
        failures.append(f"has {values.size} entries, matching no entity's count ({sizes})")
    return failures


def _entity_of(name: str, variable_entities: Mapping[str, str] | None) -> str | None:
    if name.startswith("person_") and name.endswith("_id"):
        return "person"
    if name.endswith("_id") and name[: -len("_id")] in ENTITIES:
        return name[: -len("_id")]
    if name == "household_weight":
        return "household"
    return None if variable_entities is None else variable_entities.get(name)


def _integral(values: np.ndarray) -> bool:
    if values.dtype.kind in "iu":
        return True
    return values.dtype.kind == "f" and bool(np.all(np.isfinite(values) & (values == np.round(values))))


def unknown_variables(path: str | os.PathLike, variable_entities: Mapping[str, str]) -> list[str]:
    """A failure for each array in the file that is not one of ``variable_entities``."""
    try:
        periods = read_h5_arrays(path)
    except ValueError:
        return []  # check_h5 already reports an unreadable file
    names = sorted({v for arrays in periods.values() for v in arrays} - variable_entities.keys())
    return [f"{v}: not a policyengine_us variable (ignored on load)" for v in names]


def run_check_h5(args: argparse.Namespace) -> int:
    """The ``check-h5`` command: print each failure, exit 1 if any."""
    from builders.policyengine import variable_entities
    from jaxcal.cli import CommandError

    entities = variable_entities() if args.policyengine else None
    any_failed = False
    for path in args.files:
        failures = check_h5(path, entities)
        if entities is not None and pathlib.Path(path).is_file():
            failures += unknown_variables(path, entities)
        if failures:
            any_failed = True
            print(f"{path}: FAILED, {len(failures)} problem(s)")
            for failure in failures:
                print(f"  - {failure}")
        else:
            print(f"{path}: ok")
    if any_failed:
        raise CommandError("some files failed the check (listed above)", EXIT_FAILED)
    return 0


def register_check_h5(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``check-h5 FILE...`` to the ``jaxcal`` parser."""
    parser = subparsers.add_parser(
        "check-h5",
        help="check that H5 files are datasets policyengine_us can load",
        description="Check that H5 files are PolicyEngine-US datasets: id arrays present and unique, "
        "person links valid, weights finite and non-negative, no NaN or infinity, array lengths "
        "matching entity counts. Lists every failure and exits 1 if any.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="H5 files to check")
    parser.add_argument(
        "--policyengine",
        action="store_true",
        help="also check variable names and entities against policyengine_us "
        "(imports it and builds its tax-benefit system: a minute or more)",
    )
    parser.set_defaults(run=run_check_h5)
    return parser
