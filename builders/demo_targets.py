"""Real calibration targets for the demo, from the statistics policyengine-us ships.

``policyengine_us/parameters/calibration/`` holds official totals (CBO, IRS SOI, SSA, USDA,
CMS/KFF, Treasury). :func:`demo_targets` reads the YAML files directly (no model import),
takes each series' value for the target year the way PolicyEngine's parameters do (the
latest value dated in or before that year, carried forward by the series' own ``uprating``
parameter when older), checks every series for plausibility against the others, and
returns the targets as plain records plus the series it left out and why.

Plausibility checks compare series with each other, never with numbers typed in here
except for broad bounds (documented beside each check): a state series must cover the 50
states and DC, and its share in each state must sit within a factor of that state's share
of House seats (the 2020 apportionment, public law, a proxy for population); per-person
amounts (SNAP per participant, SSI per recipient ...) must be in a plausible range; parts
must add up to the totals they belong to. docs/default_targets.md explains the choices.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from builders.geography import STATE_CODES
from builders.policyengine import calibration_dir
from builders.synthetic_problem import DISTRICTS_PER_STATE

STATE_FIPS = {code: fips for fips, code in STATE_CODES.items()}

Constraint = tuple[str, str, Any]
"""``(variable, operation, value)`` as in policy_data.db's ``stratum_constraints``."""


@dataclasses.dataclass(frozen=True)
class TargetRecord:
    """One target: the sum of ``variable`` over the records meeting every constraint equals ``value``."""

    variable: str
    period: int
    value: float
    source: str
    """The parameter file and key the value comes from, with the reference it cites."""
    constraints: tuple[Constraint, ...] = ()
    notes: str = ""

    @property
    def geo_level(self) -> str:
        names = {c[0] for c in self.constraints}
        if "congressional_district_geoid" in names:
            return "district"
        return "state" if "state_fips" in names else "national"


@dataclasses.dataclass(frozen=True)
class Exclusion:
    series: str
    """Parameter file (relative to ``parameters/calibration``) and key."""
    reason: str


@dataclasses.dataclass(frozen=True)
class DemoTargets:
    records: tuple[TargetRecord, ...]
    excluded: tuple[Exclusion, ...]
    checks: tuple[str, ...]
    """Each plausibility check that passed, one line each."""


class ImplausibleSeries(ValueError):
    """A series failed a plausibility check; the message says which and how."""


class _Params:
    """Reads calibration parameter files and evaluates them at a year as PolicyEngine would."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    @functools.cache
    def node(self, relpath: str) -> dict:
        import yaml

        path = self.root / relpath
        if not path.is_file():
            raise FileNotFoundError(f"calibration parameter file not found: {path}")
        with open(path) as f:
            return yaml.safe_load(f)

    def series(self, relpath: str, *keys: str | int) -> tuple[dict, dict]:
        """``(values by date, metadata)`` of the leaf at ``keys`` (mapping keys, or list indices),
        metadata inherited from parents."""
        node = self.node(relpath)
        metadata = dict(node.get("metadata") or {})
        for key in keys:
            node = node[key]
            if isinstance(node, dict) and isinstance(node.get("metadata"), dict):
                metadata |= node["metadata"]
        values = node.get("values", node) if isinstance(node, dict) else node
        dated = {
            _as_date(k): (v["value"] if isinstance(v, dict) else v)
            for k, v in values.items()
            if isinstance(k, (datetime.date, str)) and k != "metadata" and _is_date(k)
        }
        if not dated:
            raise ImplausibleSeries(f"{relpath}:{'/'.join(map(str, keys))} has no dated values")
        return dated, metadata

    def at(self, relpath: str, *keys: str | int, year: int) -> tuple[float, str]:
        """The value for ``year`` and a note on how it was obtained."""
        dated, metadata = self.series(relpath, *keys)
        end = datetime.date(year, 12, 31)
        known = [d for d in dated if d <= end]
        if not known:
            raise ImplausibleSeries(f"{relpath}:{'/'.join(map(str, keys))} has no value for {year} or earlier")
        date = max(known)
        value = float(dated[date])
        if date.year == year:
            return value, f"value dated {date}"
        uprating = metadata.get("uprating")
        if uprating is None:
            return value, f"value dated {date}, not uprated (the series declares no uprating)"
        parameter = uprating["parameter"] if isinstance(uprating, dict) else uprating
        factor = self.parameter_value(parameter, datetime.date(year, 1, 1)) / self.parameter_value(parameter, date)
        return value * factor, f"value dated {date} uprated to {year} by {parameter} (x{factor:.4f})"

    def parameter_value(self, dotted: str, date: datetime.date) -> float:
        """A parameter such as ``calibration.gov.cbo.snap`` at ``date`` (latest value on or before it)."""
        parts = dotted.split(".")
        if parts[0] != "calibration":
            raise ImplausibleSeries(f"uprating by {dotted} is outside the calibration parameters")
        for split in range(len(parts), 1, -1):
            relpath = "/".join(parts[1:split]) + ".yaml"
            if (self.root / relpath).is_file():
                dated, _ = self.series(relpath, *parts[split:])
                known = [d for d in dated if d <= date]
                if not known:
                    raise ImplausibleSeries(f"{dotted} has no value on or before {date}")
                return float(dated[max(known)])
        raise ImplausibleSeries(f"uprating parameter {dotted} not found")

    def reference(self, relpath: str) -> str:
        refs = (self.node(relpath).get("metadata") or {}).get("reference") or []
        return "; ".join(f"{r.get('title', '')} <{r.get('href', '')}>" for r in refs if isinstance(r, dict))

    def state_values(self, relpath: str, year: int) -> tuple[dict[str, float], set[str]]:
        """``{state code: value for year}`` and the set of notes."""
        node = self.node(relpath)
        values, notes = {}, set()
        for code in node:
            if code in ("description", "metadata"):
                continue
            values[code], note = self.at(relpath, code, year=year)
            notes.add(note)
        return values, notes


def _is_date(key: Any) -> bool:
    try:
        _as_date(key)
    except ValueError:
        return False
    return True


def _as_date(key: Any) -> datetime.date:
    return key if isinstance(key, datetime.date) else datetime.date.fromisoformat(str(key))


# --- plausibility checks -------------------------------------------------------------------------


def check_state_series(values: Mapping[str, float], *, name: str, share_bounds: tuple[float, float]) -> str:
    """Raise :class:`ImplausibleSeries` unless ``values`` is a sound by-state series; return a summary.

    Each state's share of the national sum divided by its share of House seats must lie in
    ``share_bounds``: population per seat varies about 0.7-1.3x between states (Huntington-Hill
    apportionment), program enrollment per seat more.
    """
    missing = sorted(set(STATE_FIPS) - values.keys())
    unknown = sorted(values.keys() - set(STATE_FIPS))
    if missing or unknown:
        raise ImplausibleSeries(f"{name}: states missing {missing} or unknown {unknown}")
    bad = [s for s, v in values.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ImplausibleSeries(f"{name}: non-positive or non-finite values for {bad}")
    total = sum(values.values())
    seats = sum(DISTRICTS_PER_STATE.values())
    ratio = {s: (v / total) / (DISTRICTS_PER_STATE[STATE_FIPS[s]] / seats) for s, v in values.items()}
    lo, hi = share_bounds
    outside = sorted((s for s, r in ratio.items() if not lo <= r <= hi), key=lambda s: ratio[s])
    if outside:
        shown = ", ".join(f"{s} {values[s]:,.0f} ({ratio[s]:.2f}x)" for s in outside[:6])
        raise ImplausibleSeries(
            f"{name}: {len(outside)} state(s) hold a share of the total outside {lo}-{hi}x their share of "
            f"House seats: {shown}"
        )
    return (
        f"{name}: 51 states, total {total:,.0f}, share/seat share {min(ratio.values()):.2f}-{max(ratio.values()):.2f}x"
    )


def check_ratio(numerator: float, denominator: float, *, name: str, bounds: tuple[float, float]) -> str:
    """Raise :class:`ImplausibleSeries` unless ``numerator / denominator`` lies in ``bounds``."""
    ratio = numerator / denominator
    if not (math.isfinite(ratio) and bounds[0] <= ratio <= bounds[1]):
        raise ImplausibleSeries(f"{name} is {ratio:,.4g}, outside the plausible {bounds[0]:,}-{bounds[1]:,}")
    return f"{name}: {ratio:,.4g} (plausible {bounds[0]:,}-{bounds[1]:,})"


# --- the default target set ----------------------------------------------------------------------

_AGI = "adjusted_gross_income"
_FILER = ("tax_unit_is_filer", "==", 1)


def demo_targets(year: int = 2024, *, root: str | os.PathLike | None = None) -> DemoTargets:
    """The default demo targets for ``year``, each series checked; what failed is in ``excluded``."""
    p = _Params(pathlib.Path(root) if root is not None else calibration_dir())
    records: list[TargetRecord] = []
    excluded: list[Exclusion] = []
    checks: list[str] = []

    def source(relpath: str, key: str = "") -> str:
        where = f"calibration/{relpath}" + (f":{key}" if key else "")
        ref = p.reference(relpath)
        return f"{where} [{ref}]" if ref else where

    def national(relpath: str, *keys: str) -> tuple[float, str]:
        return p.at(relpath, *keys, year=year)

    def add(
        variable: str,
        relpath: str,
        keys: tuple[str, ...] = (),
        constraints: Iterable[Constraint] = (),
        value: float | None = None,
        note: str = "",
    ) -> None:
        if value is None:
            value, note = national(relpath, *keys)
        records.append(
            TargetRecord(variable, year, float(value), source(relpath, "/".join(keys)), tuple(constraints), note)
        )

    def guarded(series: str, build) -> None:
        try:
            checks.extend(build())
        except ImplausibleSeries as error:
            excluded.append(Exclusion(series, str(error)))

    population, _ = national("gov/census/populations/total.yaml")

    def population_total():
        add("person_count", "gov/census/populations/total.yaml")
        return [check_ratio(population, 1e6, name="US population (millions)", bounds=(300, 400))]

    def state_population():
        # Population per House seat varies 0.7-1.3x between states; 0.6-1.45 leaves a margin.
        return state_series("gov/census/populations/by_state.yaml", "person_count", [], (0.6, 1.45))()

    def soi_agi_bands():
        returns_file, agi_file = "gov/irs/soi/agi/number_of_returns.yaml", "gov/irs/soi/agi/total_agi.yaml"
        bands = []
        for i, (r, a) in enumerate(zip(p.node(returns_file)["brackets"], p.node(agi_file)["brackets"], strict=True)):
            lower_r, lower_a = (min(b["threshold"].values()) for b in (r, a))
            if lower_r != lower_a:
                raise ImplausibleSeries(f"SOI AGI bands disagree at bracket {i}: {lower_r} vs {lower_a}")
            bands.append(lower_r)
        if bands != sorted(bands):
            raise ImplausibleSeries("SOI AGI band thresholds are not increasing")
        counts = [p.at(returns_file, "brackets", i, "amount", year=year) for i in range(len(bands))]
        amounts = [p.at(agi_file, "brackets", i, "amount", year=year) for i in range(len(bands))]
        # Checks: the bands (positive AGI only) hold most returns; AGI per return lies inside its band.
        filing = sum(
            p.at("gov/irs/soi/returns_by_filing_status.yaml", s, year=year)[0]
            for s in ("SINGLE", "JOINT", "HEAD_OF_HOUSEHOLD", "SEPARATE")
        )
        out = [
            check_ratio(
                sum(c for c, _ in counts), filing, name="SOI returns in AGI bands / all returns", bounds=(0.9, 1.0)
            )
        ]
        cbo_agi, _ = national("gov/cbo/income_by_source.yaml", "adjusted_gross_income")
        out.append(
            check_ratio(sum(a for a, _ in amounts), cbo_agi, name="SOI AGI in bands / CBO AGI", bounds=(0.9, 1.1))
        )
        for i, lower in enumerate(bands):
            upper = bands[i + 1] if i + 1 < len(bands) else math.inf
            mean = amounts[i][0] / counts[i][0]
            if not lower * 0.95 <= mean <= upper * 1.35:  # uprating moves a band's mean a little
                raise ImplausibleSeries(f"SOI band {lower:,}-{upper:,}: mean AGI {mean:,.0f} lies outside the band")
        for i, lower in enumerate(bands):
            band = [(_AGI, ">=", lower)] + ([(_AGI, "<", bands[i + 1])] if i + 1 < len(bands) else [])
            add("tax_unit_count", returns_file, ("brackets", str(i)), [_FILER, *band], *counts[i])
            add(_AGI, agi_file, ("brackets", str(i)), [_FILER, *band], *amounts[i])
        out.append(f"SOI AGI bands: {len(bands)} bands from ${bands[0]:,} to ${bands[-1]:,}+")
        return out

    def income(variable, relpath, bounds, per="person"):
        def build():
            value, _ = national(relpath)
            add(variable, relpath)
            return [check_ratio(value, population, name=f"{variable} per {per}", bounds=bounds)]

        return build

    def program(amount_var, amount_file, count_file, constraint, per_bounds, share_bounds):
        def build():
            amount, _ = national(amount_file)
            count, _ = national(count_file)
            out = [
                check_ratio(amount, count, name=f"{amount_var} per recipient", bounds=per_bounds),
                check_ratio(count, population, name=f"{amount_var} recipients per person", bounds=share_bounds),
            ]
            add(amount_var, amount_file)
            add("person_count", count_file, (), [constraint])
            return out

        return build

    def state_series(relpath, variable, constraints, share_bounds, per=None):
        def build():
            values, notes = p.state_values(relpath, year)
            out = [check_state_series(values, name=relpath, share_bounds=share_bounds)]
            if per is not None:  # amount per unit of another state series
                other_file, bounds = per
                other, _ = p.state_values(other_file, year)
                for s in sorted(values):
                    check_ratio(values[s], other[s], name=f"{relpath} / {other_file} in {s}", bounds=bounds)
                out.append(f"{relpath} per {other_file}: every state within {bounds}")
            for s in sorted(values, key=STATE_FIPS.__getitem__):  # check_state_series vetted the codes
                add(
                    variable,
                    relpath,
                    (s,),
                    [*constraints, ("state_fips", "==", STATE_FIPS[s])],
                    values[s],
                    "; ".join(sorted(notes)),
                )
            return out

        return build

    guarded("gov/census/populations/total.yaml", population_total)
    guarded("gov/census/populations/by_state.yaml", state_population)
    guarded("gov/irs/soi/agi", soi_agi_bands)
    # Bounds per person: employment income ~$30k, self-employment (Schedule C/F) ~$1.5k, interest ~$0.4k.
    for variable, bounds in (
        ("employment_income", (15_000, 50_000)),
        ("self_employment_income", (500, 5_000)),
        ("taxable_interest_income", (100, 2_000)),
    ):
        relpath = f"gov/irs/soi/{variable}.yaml"
        guarded(relpath, income(variable, relpath, bounds))
    # Programs: dollars per recipient a year, recipients per person.
    guarded(
        "gov/cbo/social_security.yaml",
        program(
            "social_security",
            "gov/cbo/social_security.yaml",
            "gov/ssa/social_security/participation.yaml",
            ("social_security", ">", 0),
            (10_000, 35_000),
            (0.1, 0.3),
        ),
    )
    guarded(
        "gov/cbo/ssi.yaml",
        program(
            "ssi", "gov/cbo/ssi.yaml", "gov/ssa/ssi/participation.yaml", ("ssi", ">", 0), (4_000, 15_000), (0.01, 0.04)
        ),
    )
    guarded(
        "gov/cbo/snap.yaml",
        program(
            "snap",
            "gov/cbo/snap.yaml",
            "gov/usda/snap/participation.yaml",
            ("snap", ">", 0),
            (1_000, 4_000),
            (0.05, 0.2),
        ),
    )

    def eitc():
        value, _ = national("gov/treasury/tax_expenditures/eitc.yaml")
        add("eitc", "gov/treasury/tax_expenditures/eitc.yaml")
        return [check_ratio(value, population, name="eitc per person", bounds=(100, 400))]

    guarded("gov/treasury/tax_expenditures/eitc.yaml", eitc)
    # State series: enrollment within 0.25-4x a state's seat share (observed 0.35-1.42 for Medicaid,
    # 0.23-3.06 for ACA, where Florida's marketplace is three times its size).
    guarded(
        "gov/hhs/medicaid/totals/enrollment.yaml",
        state_series(
            "gov/hhs/medicaid/totals/enrollment.yaml", "person_count", [("medicaid_enrolled", "==", 1)], (0.25, 4)
        ),
    )
    guarded(
        "gov/aca/enrollment/state.yaml",
        state_series("gov/aca/enrollment/state.yaml", "person_count", [("aca_ptc", ">", 0)], (0.15, 4)),
    )
    guarded(
        "gov/aca/spending/state.yaml",
        state_series(
            "gov/aca/spending/state.yaml",
            "aca_ptc",
            [],
            (0.02, 5),
            per=("gov/aca/enrollment/state.yaml", (300, 15_000)),
        ),
    )
    return DemoTargets(tuple(records), tuple(excluded), tuple(checks))


def write_target_db(
    targets: DemoTargets | Iterable[TargetRecord], path: str | os.PathLike, *, overwrite: bool = False
) -> pathlib.Path:
    """Write the records into a target database in policy_data.db's schema (builders.target_db).

    Strata follow PolicyEngine's tree: the nation (no constraints), each state under it,
    each target's own stratum under its state (or the nation). ``source`` and ``notes`` go
    to the targets table.
    """
    from builders.target_db import TargetDatabaseWriter

    records = targets.records if isinstance(targets, DemoTargets) else tuple(targets)
    path = pathlib.Path(path)
    with TargetDatabaseWriter(path, overwrite=overwrite) as db:
        nation = db.add_stratum([], notes="United States")
        for record in records:
            geography = [c for c in record.constraints if c[0] == "state_fips"]
            parent = (
                db.add_stratum(geography, parent=nation, notes=f"State FIPS {geography[0][2]}") if geography else nation
            )
            stratum = (
                parent if list(record.constraints) == geography else db.add_stratum(record.constraints, parent=parent)
            )
            db.add_target(
                record.variable,
                record.period,
                record.value,
                stratum_id=stratum,
                source=record.source,
                notes=record.notes,
            )
    return path
