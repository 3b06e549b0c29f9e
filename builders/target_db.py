"""Target databases in PolicyEngine's ``policy_data.db`` schema: write, overview, query, uprate.

Three tables, as in policyengine-us-data, so their real file reads as is:
``strata`` (a population: ``stratum_id, definition_hash, parent_stratum_id, notes``),
``stratum_constraints`` (what defines it: ``constraint_variable operation value``, AND-ed)
and ``targets`` (a statistic of a stratum: ``variable, period, value, reform_id, active``...).

- :class:`TargetDatabaseWriter` creates a database atomically (tests, synthetic builds);
  :func:`write_target_tree` writes targets under PolicyEngine's strata tree with it.
- :func:`target_overview` derives each target's ``geo_level``, ``geographic_id`` and
  ``domain_variable`` from its stratum's constraints.
- :func:`query_targets` keeps the active rows and, per (stratum, variable, reform), the
  latest period not after the dataset year, else the earliest.
- :func:`uprate_targets` scales values to the dataset year by CPI-U (amounts) or total
  population (``*_count`` variables), the series a loaded model gives
  (:meth:`builders.policyengine.PolicyEngineSimulation.uprating_indices`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = """
CREATE TABLE strata (
    stratum_id INTEGER PRIMARY KEY,
    definition_hash TEXT,
    parent_stratum_id INTEGER REFERENCES strata (stratum_id),
    notes TEXT
);
CREATE TABLE stratum_constraints (
    stratum_id INTEGER NOT NULL REFERENCES strata (stratum_id),
    constraint_variable TEXT NOT NULL,
    operation TEXT NOT NULL,
    value TEXT NOT NULL,
    notes TEXT,
    PRIMARY KEY (stratum_id, constraint_variable, operation, value)
);
CREATE TABLE targets (
    target_id INTEGER PRIMARY KEY,
    variable TEXT NOT NULL,
    period INTEGER NOT NULL,
    stratum_id INTEGER NOT NULL REFERENCES strata (stratum_id),
    reform_id INTEGER NOT NULL DEFAULT 0,
    value REAL,
    active BOOLEAN NOT NULL DEFAULT 1,
    tolerance REAL,
    source TEXT,
    notes TEXT
);
"""
TABLES = ("strata", "stratum_constraints", "targets")
REQUIRED_COLUMNS = {
    "stratum_constraints": ("stratum_id", "constraint_variable", "operation", "value"),
    "targets": ("target_id", "variable", "period", "stratum_id", "value", "active"),
}
"""The columns jaxcal reads (``targets``' ``reform_id`` is 0 when absent)."""
OPERATIONS = ("==", "!=", ">", ">=", "<", "<=", "in")
"""policyengine-us-data's constraint operations (``in``: one of a ``|``-separated set)."""
GEOGRAPHIC_VARIABLES = ("state_fips", "congressional_district_geoid")
"""Constraints that place a stratum (district wins over state) rather than define a domain."""
NON_DOMAIN_VARIABLES = GEOGRAPHIC_VARIABLES + ("tax_unit_is_filer", "ucgid_str")
"""Constraint variables that never count as the target's ``domain_variable``."""
GEO_LEVEL_ORDER = {"national": 0, "state": 1, "district": 2}


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``variable operation value``; ``value`` is kept as the database's text."""

    variable: str
    operation: str
    value: str

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"constraint operation must be one of {' '.join(OPERATIONS)}, got {self.operation!r}")

    def __str__(self) -> str:
        return f"{self.variable}{self.operation}{self.value}"


ConstraintLike = Constraint | tuple[str, str, Any]


class TargetDatabaseWriter:
    """Writes a new target database; the file appears, complete, when the ``with`` block ends.

    >>> with TargetDatabaseWriter("targets.db") as db:          # doctest: +SKIP
    ...     ca = db.add_stratum([("state_fips", "==", 6)])
    ...     db.add_target("person_count", 2024, 39e6, constraints=[("state_fips", "==", 6), ("age", "<", 18)],
    ...                   parent=ca)

    Strata are shared: the same constraint set (order aside) is one stratum.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.path = pathlib.Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._temporary.unlink(missing_ok=True)
        self._connection = sqlite3.connect(self._temporary)
        self._connection.executescript(SCHEMA)
        self._strata: dict[str, int] = {}

    def __enter__(self) -> TargetDatabaseWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._connection.commit()
        self._connection.close()
        if error_type is None:
            os.replace(self._temporary, self.path)
        else:
            self._temporary.unlink(missing_ok=True)

    def add_stratum(
        self, constraints: Iterable[ConstraintLike] = (), *, parent: int | None = None, notes: str | None = None
    ) -> int:
        """The id of the stratum with these constraints, created when new."""
        ordered = sorted({_as_constraint(c) for c in constraints}, key=lambda c: (c.variable, c.operation, c.value))
        definition_hash = hashlib.sha256("\n".join(map(str, ordered)).encode()).hexdigest()
        if definition_hash in self._strata:
            return self._strata[definition_hash]
        cursor = self._connection.execute(
            "INSERT INTO strata (definition_hash, parent_stratum_id, notes) VALUES (?, ?, ?)",
            (definition_hash, parent, notes),
        )
        stratum_id = _inserted_id(cursor)
        self._connection.executemany(
            "INSERT INTO stratum_constraints (stratum_id, constraint_variable, operation, value) VALUES (?, ?, ?, ?)",
            [(stratum_id, c.variable, c.operation, c.value) for c in ordered],
        )
        self._strata[definition_hash] = stratum_id
        return stratum_id

    def add_target(
        self,
        variable: str,
        period: int,
        value: float,
        *,
        constraints: Iterable[ConstraintLike] = (),
        stratum_id: int | None = None,
        parent: int | None = None,
        reform_id: int = 0,
        active: bool = True,
        tolerance: float | None = None,
        source: str | None = None,
        notes: str | None = None,
    ) -> int:
        """Add one target of the stratum ``stratum_id`` or of the one ``constraints`` define."""
        if stratum_id is None:
            stratum_id = self.add_stratum(constraints, parent=parent)
        cursor = self._connection.execute(
            "INSERT INTO targets (variable, period, stratum_id, reform_id, value, active, tolerance, source, notes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (variable, int(period), stratum_id, int(reform_id), float(value), bool(active), tolerance, source, notes),
        )
        return _inserted_id(cursor)


class TargetLike(Protocol):
    """What :func:`write_target_tree` reads of a target (e.g. :class:`builders.real_targets.RealTarget`)."""

    @property
    def variable(self) -> str: ...
    @property
    def period(self) -> int: ...
    @property
    def value(self) -> float: ...
    @property
    def constraints(self) -> Sequence[tuple[str, str, Any]]: ...
    @property
    def source(self) -> str | None: ...
    @property
    def notes(self) -> str | None: ...


def write_target_tree(
    path: str | os.PathLike, targets: Iterable[TargetLike], *, overwrite: bool = False
) -> pathlib.Path:
    """Write ``targets`` into a new database under PolicyEngine's strata tree; return its path.

    The nation (no constraints) is the root, each state (``state_fips == s``) hangs under it,
    each district (``congressional_district_geoid == g``) under its state ``g // 100``, and
    each target's stratum (all its constraints) under its place, the stratum of its geographic
    constraints; a target with only geographic constraints is its place's. A target's stratum
    is noted with its notes up to the first ``;``, ``targets.source`` and ``notes`` are its own.
    """
    from builders.geography import STATE_CODES

    with TargetDatabaseWriter(path, overwrite=overwrite) as db:
        nation = db.add_stratum([], notes="United States")
        places: dict[tuple[tuple[str, str, Any], ...], int] = {(): nation}

        def place(geography: tuple[tuple[str, str, Any], ...]) -> int:
            if geography not in places:
                variable, _, value = geography[0]
                if variable == "state_fips":
                    parent, notes = nation, f"State FIPS {value} ({STATE_CODES.get(int(value), '?')})"
                else:
                    parent, notes = place((("state_fips", "==", int(value) // 100),)), f"CD GEOID {value}"
                places[geography] = db.add_stratum(geography, parent=parent, notes=notes)
            return places[geography]

        for target in targets:
            geography = tuple(c for c in target.constraints if c[0] in GEOGRAPHIC_VARIABLES)
            if len(geography) > 1:
                raise ValueError(f"a target has one place, got {geography} ({target.variable})")
            parent = place(geography)
            notes = (target.notes or "").split(";")[0] or None
            stratum = db.add_stratum(target.constraints, parent=parent, notes=notes)
            db.add_target(
                target.variable,
                target.period,
                target.value,
                stratum_id=stratum,
                source=target.source,
                notes=target.notes,
            )
    return pathlib.Path(path)


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection to an existing target database with the three tables.

    ``FileNotFoundError`` for a missing file, ``ValueError`` for a file without the tables, one
    that cannot be read (a view over a dropped table) or one that lacks a column of
    :data:`REQUIRED_COLUMNS`. :func:`read_targets` also refuses, naming the table and column,
    a value its schema rules out: NULL or non-whole ids and periods (text such as ``'2024'``
    reads as the number), text values, an ``active`` other than 0 or 1.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"target database not found: {path}")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)  # as_uri escapes # ? %
    try:
        present = dict(connection.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view')"))
    except sqlite3.DatabaseError as error:
        connection.close()
        raise ValueError(f"{path} is not an SQLite target database ({error})") from None
    missing = [table for table in TABLES if table not in present]
    if missing:
        connection.close()
        raise ValueError(f"target database {path} lacks the table(s) {', '.join(missing)}")
    for table in TABLES:  # a view over a dropped table fails only when read: name it now
        try:
            cursor = connection.execute(f"SELECT * FROM {table} LIMIT 0")
        except sqlite3.Error as error:
            connection.close()
            raise ValueError(f"target database {path}: its {table} {present[table]} cannot be read ({error})") from None
        columns = {d[0] for d in cursor.description}
        lacking = [c for c in REQUIRED_COLUMNS.get(table, ()) if c not in columns]
        if lacking:
            connection.close()
            raise ValueError(f"target database {path}: the {table} table lacks column(s) {', '.join(lacking)}")
    return connection


def stratum_constraints(connection: sqlite3.Connection) -> dict[int, list[Constraint]]:
    """Each stratum's constraints, sorted by variable, operation and value."""
    rows = connection.execute(
        "SELECT stratum_id, constraint_variable, operation, value FROM stratum_constraints"
        " ORDER BY stratum_id, constraint_variable, operation, value"
    )
    constraints: dict[int, list[Constraint]] = {}
    for stratum_id, variable, operation, value in rows:
        whole = _whole(stratum_id)
        if whole is None:
            raise ValueError(
                f"the stratum_constraints table's stratum_id must be a whole number, got {_sql(stratum_id)}"
            )
        for column, text in (("constraint_variable", variable), ("operation", operation), ("value", value)):
            if text is None or isinstance(text, bytes):
                raise ValueError(
                    f"the stratum_constraints table's {column} must be text, got {_sql(text)} (stratum_id {stratum_id})"
                )
        constraints.setdefault(whole, []).append(Constraint(str(variable), str(operation), str(value)))
    return constraints


def target_overview(connection: sqlite3.Connection) -> pd.DataFrame:
    """Every target with ``geo_level``, ``geographic_id`` and ``domain_variable``.

    As policyengine-us-data's ``target_overview`` view: ``geo_level`` is ``district`` with a
    ``congressional_district_geoid`` constraint or a 13-character ``ucgid_str`` (whatever the
    operation), else ``state`` with a ``state_fips`` constraint or an 11-character
    ``ucgid_str``, else ``national``; ``geographic_id`` is the greatest district value, else
    state value, else ``ucgid_str`` value, else ``US``; ``domain_variable`` joins, sorted, the
    distinct constraint variables other than :data:`NON_DOMAIN_VARIABLES` (``None`` if none).
    """
    import pandas as pd

    targets = pd.read_sql_query("SELECT * FROM targets ORDER BY target_id", connection)
    missing = [c for c in ("target_id", "variable", "period", "stratum_id", "value", "active") if c not in targets]
    if missing:
        raise ValueError(f"the targets table lacks column(s) {', '.join(missing)}")
    for column, default in (("reform_id", 0), ("tolerance", None), ("source", None), ("notes", None)):
        if column not in targets:
            targets[column] = default
    for column, kind in _TARGET_KINDS.items():
        targets[column] = _checked(targets, column, kind)
    described = {sid: describe_stratum(cs) for sid, cs in stratum_constraints(connection).items()}
    national = ("national", "US", None)
    geo = [described.get(int(sid), national) for sid in targets["stratum_id"]]
    targets["geo_level"] = [g[0] for g in geo]
    targets["geographic_id"] = [g[1] for g in geo]
    targets["domain_variable"] = pd.Series([g[2] for g in geo], dtype=object)
    return targets


def describe_stratum(constraints: Sequence[Constraint]) -> tuple[str, str, str | None]:
    """``(geo_level, geographic_id, domain_variable)`` of a stratum (see :func:`target_overview`)."""

    def values(variable: str) -> list[str]:
        return [c.value for c in constraints if c.variable == variable]

    districts, states, ucgids = values("congressional_district_geoid"), values("state_fips"), values("ucgid_str")
    if districts or any(len(u) == 13 for u in ucgids):
        level = "district"
    elif states or any(len(u) == 11 for u in ucgids):
        level = "state"
    else:
        level = "national"
    geographic_id = max(districts or states or ucgids or ["US"])  # SQL's MAX of text, as the view's COALESCE
    domain = sorted({c.variable for c in constraints} - set(NON_DOMAIN_VARIABLES))
    return level, geographic_id, ",".join(domain) or None


def query_targets(connection: sqlite3.Connection, year: int) -> pd.DataFrame:
    """The active targets, one period per (stratum, variable, reform_id): the latest period
    ``<= year`` when there is one, else the earliest. Ordered by ``target_id``."""
    targets = target_overview(connection)
    targets = targets.loc[targets["active"].astype(bool)]
    period = targets["period"]
    keys = [targets["stratum_id"], targets["variable"], targets["reform_id"]]
    latest_past = period.where(period <= year).groupby(keys).transform("max")
    earliest = period.groupby(keys).transform("min")
    best = latest_past.fillna(earliest)
    return targets.loc[period == best].reset_index(drop=True)


def district_agi_targets(targets: pd.DataFrame) -> dict[int, float]:
    """AGI by district GEOID from :func:`query_targets`' rows (all active targets, as stored):
    the baseline ``adjusted_gross_income`` district rows without a domain, the last by
    ``target_id`` where several share a district (policyengine-us-data's
    ``get_district_agi_targets``, the weights of :func:`builders.geography.assign_geography`)."""
    domain = targets["domain_variable"].fillna("")
    rows = targets.loc[
        (targets["variable"] == "adjusted_gross_income")
        & (targets["geo_level"] == "district")
        & (targets["reform_id"] == 0)
        & (domain == "")
    ].sort_values("target_id", kind="stable")
    return {int(place): float(value) for place, value in zip(rows["geographic_id"], rows["value"])}


def uprate_targets(
    targets: pd.DataFrame, year: int, cpi: Callable[[int], float], population: Callable[[int], float]
) -> pd.DataFrame:
    """``targets`` with ``value`` uprated from ``period`` to ``year``, plus ``original_value`` and
    ``uprating_factor``: ``population(year) / population(period)`` for ``*_count`` variables,
    ``cpi(year) / cpi(period)`` for the rest, 1 where ``period == year``."""
    import numpy as np

    targets = targets.copy()
    is_count = targets["variable"].str.endswith("_count").to_numpy()
    periods = targets["period"].astype(int).to_numpy()
    factors = np.ones(len(targets))
    for period, counts in {(int(p), bool(c)) for p, c in zip(periods, is_count) if p != year}:
        index = population if counts else cpi
        factors[(periods == period) & (is_count == counts)] = index(year) / index(period)
    targets["original_value"] = targets["value"].astype(float)
    targets["uprating_factor"] = factors
    targets["value"] = targets["original_value"] * factors
    return targets


def select_domains(targets: pd.DataFrame, domain_variables: Sequence[str]) -> pd.DataFrame:
    """The rows of ``targets`` whose ``domain_variable`` is one of ``domain_variables`` (rows
    without a domain never are): policyengine-us-data's ``--domain-variables`` filter."""
    return targets.loc[targets["domain_variable"].isin(list(domain_variables))].reset_index(drop=True)


def reconcile_districts(
    targets: pd.DataFrame,
    domains: Sequence[str],
    year: int,
    state_factors: Callable[[str], Mapping[int, Mapping[str, float]] | None] = lambda domain: None,
) -> pd.DataFrame:
    """:func:`uprate_targets`' rows with each of ``domains`` reconciled hierarchically, as
    policyengine-us-data's ``--hierarchical-domains`` does: for every state row of the domain
    (the first by ``target_id`` for each state and variable), the districts of that state and
    variable in the domain take ``value = original_value * hif * state_uprating_factor``,
    ``hif`` the state's original value over the districts' sum of theirs (districts summing to
    0 are left alone). The factor is ``state_factors(domain)[state][variable]`` (1 for a variable
    it lacks) where that names the state, else the state row's own ``uprating_factor``. The
    domain's national and state rows of another period than ``year`` are then dropped. Adds the
    ``hif`` and ``state_uprating_factor`` columns (NaN on the rows left alone)."""
    import numpy as np

    table = targets.reset_index(drop=True)
    table = table.assign(hif=np.nan, state_uprating_factor=np.nan)
    place = table["geographic_id"].map(_whole_place).astype(float)  # NaN for US and UCGIDs
    by_id = table.sort_values("target_id", kind="stable")  # PolicyEngine's order: firsts and sums in it
    dropped = np.zeros(len(table), bool)
    for domain in domains:
        in_domain = table["domain_variable"] == domain
        overrides = state_factors(domain) or {}
        state_rows = by_id.loc[in_domain & (table["geo_level"] == "state")]
        for _, row in state_rows.drop_duplicates(["geographic_id", "variable"]).iterrows():
            state = _whole_place(row["geographic_id"])
            if state is None:  # a state named by UCGID only (PolicyEngine's own step fails on it)
                continue
            districts = in_domain & (table["geo_level"] == "district") & (table["variable"] == row["variable"])
            districts &= place.floordiv(100) == state
            total = by_id.loc[districts, "original_value"].sum()
            if not districts.any() or total == 0:
                continue
            factor = overrides[state].get(row["variable"], 1.0) if state in overrides else row["uprating_factor"]
            hif = row["original_value"] / total
            table.loc[districts, "hif"] = hif
            table.loc[districts, "state_uprating_factor"] = factor
            table.loc[districts, "value"] = table.loc[districts, "original_value"] * hif * factor
        upper = in_domain & table["geo_level"].isin(["national", "state"])
        dropped |= (upper & (table["period"].astype(int) != year)).to_numpy()
    return table.loc[~dropped].reset_index(drop=True)


def _whole_place(geographic_id: Any) -> int | None:
    """A state's or district's numeric ``geographic_id`` as an int, None for ``US`` or a UCGID."""
    try:
        return int(geographic_id)
    except (TypeError, ValueError):
        return None


def parse_constraint_value(value: str) -> int | float | bool | str:
    """A constraint's text as int, else float, else bool (``true``/``false``), else the string."""
    for parse in (int, float):
        try:
            return parse(value)
        except ValueError:
            pass
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return value


_TARGET_KINDS = {
    "target_id": "whole",
    "variable": "text",
    "period": "whole",
    "stratum_id": "whole",
    "reform_id": "whole",
    "value": "number",
    "active": "flag",
}
"""How each column of ``targets`` is read; ``value`` may be NULL (PolicyEngine's schema allows it)."""
_KIND_PHRASES = {
    "whole": "a whole number",
    "text": "text",
    "number": "a number or NULL",
    "flag": "0 or 1 (false or true)",
}


def _checked(targets: pd.DataFrame, column: str, kind: str) -> pd.Series:
    """``targets[column]`` as ``kind`` would have it (text such as ``'2024'`` read as the number
    it spells, as SQLite's INTEGER columns store it); ``ValueError`` naming the column, the
    values and their ``target_id`` for what it cannot be (NULL, ``'abc'``, ``2023.5``)."""
    import numpy as np
    import pandas as pd

    values: pd.Series = targets[column]  # pyright: ignore[reportAssignmentType]  (one column: a Series)
    raw = values.tolist()  # Python scalars: what SQLite gave, NULL as None or NaN
    if kind == "text":
        bad = np.array([not isinstance(v, str) for v in raw], bool)
        checked = values
    elif kind == "number":
        reals = [_real(v) for v in raw]
        bad = np.array([r is None for r in reals], bool)
        checked = pd.Series([np.nan if r is None else r for r in reals], index=values.index, dtype=np.float64)
    else:
        wholes = [_whole(v) for v in raw]
        bad = np.array([w is None or (kind == "flag" and w not in (0, 1)) for w in wholes], bool)
        checked = pd.Series([w or 0 for w in wholes], index=values.index, dtype=bool if kind == "flag" else np.int64)
    if bad.any():
        shown = ", ".join(dict.fromkeys(_sql(v) for v in values[bad].tolist()[:20]))
        where = ", ".join(str(i) for i in targets["target_id"][bad].tolist()[:5])
        raise ValueError(
            f"the targets table's {column} must be {_KIND_PHRASES[kind]}, got {shown} "
            f"({int(bad.sum())} row(s): target_id {where}{', ...' if bad.sum() > 5 else ''})"
        )
    return checked


def _sql(value: Any) -> str:
    """``value`` as an error message shows it: ``NULL`` for SQL's NULL (pandas' NaN)."""
    return "NULL" if value is None or (isinstance(value, float) and value != value) else repr(value)


def _real(value: Any) -> float | None:
    """``value`` (a number, text that spells one, or NULL: NaN) as a float, else None (inf too)."""
    if value is None or (isinstance(value, float) and value != value):
        return float("nan")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _whole(value: Any) -> int | None:
    """``value`` (an integer, a float that is one, or text that spells one) as an int, else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The row id an ``INSERT`` on ``cursor`` gave (``lastrowid`` is ``None`` only before one)."""
    if cursor.lastrowid is None:
        raise RuntimeError("the INSERT gave no row id")
    return int(cursor.lastrowid)


def _as_constraint(constraint: ConstraintLike) -> Constraint:
    if isinstance(constraint, Constraint):
        return constraint
    variable, operation, value = constraint
    return Constraint(str(variable), str(operation), str(value))


def read_targets(path: str | os.PathLike, year: int) -> tuple[pd.DataFrame, dict[int, list[Constraint]]]:
    """:func:`query_targets` on the database at ``path``, with each stratum's constraints."""
    import pandas as pd

    connection = connect(path)
    try:
        return query_targets(connection, year), stratum_constraints(connection)
    except (sqlite3.Error, pd.errors.DatabaseError) as error:  # a damaged page, a view failing mid-read
        raise ValueError(f"target database {path} cannot be read ({error})") from None
    except ValueError as error:
        raise ValueError(f"target database {path}: {error}") from None
    finally:
        connection.close()


__all__ = [
    "Constraint",
    "TargetDatabaseWriter",
    "TargetLike",
    "connect",
    "describe_stratum",
    "parse_constraint_value",
    "query_targets",
    "read_targets",
    "reconcile_districts",
    "select_domains",
    "stratum_constraints",
    "target_overview",
    "uprate_targets",
    "write_target_tree",
]
