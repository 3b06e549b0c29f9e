"""Real US calibration targets, built offline, in PolicyEngine's ``policy_data.db`` schema.

The statistics are the raw inputs of PolicyEngine's own target database, as the
policyengine-us-data wheel ships them under ``policyengine_us_data/storage/``: Census ACS
2024 1-year S0101 (age by sex) for the nation, the 50 states and DC and the 436
congressional districts of the 119th Congress, ACS S2201 (SNAP) by district, IRS SOI
AGI by state and AGI band and the national Publication 1304 Table 1.1, USDA FNS SNAP
households and cost by state, CMS Medicaid enrollment by state, IRS SOI EITC by state.

How they reach a machine: compact CSV extracts (only the rows and columns used, the
numbers as the source file spells them) are vendored under ``builders/data/real_targets/``
with ``manifest.json``, which records the wheel's version and each source file's and
extract's sha256. :func:`write_real_target_db` reads only the extracts (no wheel needed);
``python -m builders.real_targets --regenerate`` rewrites them from the installed wheel,
byte for byte the same when the wheel is unchanged (tests/test_real_targets.py checks).

Strata and constraints follow PolicyEngine's ETL (``policyengine_us_data/db/etl_*.py``),
read but not copied: the nation (no constraints), each state (``state_fips == s``) under
it, each district (``congressional_district_geoid == state_fips * 100 + number``, at-large
districts and DC number 1) under its state; age bands ``age >= lo`` and ``age < hi`` (the
18 five-year S0101 bands, 85+ open); AGI bands ``adjusted_gross_income >= lo`` and ``< hi``
of filers (``tax_unit_is_filer == 1``; an infinite bound is left out); SNAP households as
``household_count`` with ``snap > 0``; Medicaid as ``person_count`` with
``medicaid_enrolled == True``. docs/default_targets.md ("The real target database") lists
the series, their periods and what was left out.

:func:`district_populations` gives the ACS district totals as the ``places`` table of
:func:`builders.geography.assign_geography`; :func:`state_subset` the targets of a few states
(the default package's).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from builders.geography import STATE_CODES
from builders.target_db import GEOGRAPHIC_VARIABLES

if TYPE_CHECKING:
    import pandas as pd

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data" / "real_targets"
MANIFEST = "manifest.json"
WHEEL = "policyengine-us-data"
WHEEL_PACKAGE = "policyengine_us_data"
STATE_FIPS = {code: fips for fips, code in STATE_CODES.items()}
_STATE_NAMES = (  # noqa: SIM905 (six lines, where a list literal takes 51)
    "Alabama,Alaska,Arizona,Arkansas,California,Colorado,Connecticut,Delaware,District of Columbia,"
    "Florida,Georgia,Hawaii,Idaho,Illinois,Indiana,Iowa,Kansas,Kentucky,Louisiana,Maine,Maryland,"
    "Massachusetts,Michigan,Minnesota,Mississippi,Missouri,Montana,Nebraska,Nevada,New Hampshire,"
    "New Jersey,New Mexico,New York,North Carolina,North Dakota,Ohio,Oklahoma,Oregon,Pennsylvania,"
    "Rhode Island,South Carolina,South Dakota,Tennessee,Texas,Utah,Vermont,Virginia,Washington,"
    "West Virginia,Wisconsin,Wyoming"
).split(",")
STATE_NAME_FIPS: dict[str, int] = dict(zip(_STATE_NAMES, sorted(STATE_CODES), strict=True))
"""FIPS by state name: the codes are numbered in the alphabetical order of the names."""

# The 18 S0101 age bands (label in the ACS variable's name, lower age, upper age exclusive).
AGE_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("Under 5 years", 0, 5),
    ("5 to 9 years", 5, 10),
    ("10 to 14 years", 10, 15),
    ("15 to 19 years", 15, 20),
    ("20 to 24 years", 20, 25),
    ("25 to 29 years", 25, 30),
    ("30 to 34 years", 30, 35),
    ("35 to 39 years", 35, 40),
    ("40 to 44 years", 40, 45),
    ("45 to 49 years", 45, 50),
    ("50 to 54 years", 50, 55),
    ("55 to 59 years", 55, 60),
    ("60 to 64 years", 60, 65),
    ("65 to 69 years", 65, 70),
    ("70 to 74 years", 70, 75),
    ("75 to 79 years", 75, 80),
    ("80 to 84 years", 80, 85),
    ("85 years and over", 85, None),
)
AGE_COLUMNS = tuple(f"{lo}-{hi - 1}" if hi is not None else f"{lo}+" for _, lo, hi in AGE_BANDS)
S0101_LABEL = "Estimate!!Total!!Total population"
S2201_SNAP_LABEL = "Estimate!!Households receiving food stamps/SNAP!!Households"
PUERTO_RICO = ("0400000US72", "5001800US7298", "5001900US7298")
"""Puerto Rico's state and district GEO_IDs: left out, as PolicyEngine's ETL does."""

ACS_YEAR = 2024
SOI_STATE_YEAR = 2022  # agi_state.csv and eitc_state.csv: IRS SOI state file 22in55cmcsv (TY2022)
SOI_NATIONAL_YEAR = 2023  # soi_targets.csv's latest Publication 1304 year
ACA_PTC_YEARS = (2024, 2025)
"""The years of the ACA PTC multipliers vendored (each from 2022)."""
SNAP_STATE_YEAR = 2023  # snap_state.csv: USDA FNS FY2023 (pull_snap_targets.py's default year)
MEDICAID_PERIOD = 202412  # CMS Medicaid and CHIP enrollment, December 2024 final reports

_RAW = "storage/calibration/raw_inputs"
_TARGETS = "storage/calibration_targets"


@dataclasses.dataclass(frozen=True)
class Extract:
    """One vendored CSV: its name, the wheel file it comes from and what that file is."""

    name: str
    source: str
    """Path inside the ``policyengine_us_data`` package."""
    table: str
    """The publisher's table the source file holds."""


EXTRACTS = (
    Extract("acs_s0101_national.csv", f"{_RAW}/acs_S0101_national_2024.json", "Census ACS 2024 1-year S0101"),
    Extract("acs_s0101_state.csv", f"{_RAW}/acs_S0101_state_2024.json", "Census ACS 2024 1-year S0101"),
    Extract("acs_s0101_district.csv", f"{_RAW}/acs_S0101_district_2024.json", "Census ACS 2024 1-year S0101"),
    Extract("acs_s2201_district.csv", f"{_RAW}/acs_S2201_district_2024.json", "Census ACS 2024 1-year S2201"),
    Extract("soi_agi_state.csv", f"{_TARGETS}/agi_state.csv", "IRS SOI state data TY2022 (22in55cmcsv) N1, A00100"),
    Extract(
        "soi_agi_national.csv", f"{_TARGETS}/soi_targets.csv", "IRS SOI Publication 1304 Table 1.1 TY2023, all returns"
    ),
    Extract("snap_state.csv", f"{_TARGETS}/snap_state.csv", "USDA FNS SNAP state data FY2023 (Households, Cost)"),
    Extract(
        "medicaid_state.csv",
        f"{_RAW}/medicaid_enrollment_2024.csv",
        "CMS Medicaid and CHIP enrollment (data.medicaid.gov), Total Medicaid Enrollment, final reports",
    ),
    Extract(
        "eitc_state.csv", f"{_TARGETS}/eitc_state.csv", "IRS SOI Historical Table 2 TY2022 (22in55cmcsv) N59660, A59660"
    ),
    Extract(
        "population_by_state.csv",
        f"{_TARGETS}/population_by_state.csv",
        "Census population estimates by state (cross-check only)",
    ),
    *(
        Extract(
            f"aca_ptc_multipliers_{year}.csv",
            f"storage/aca_ptc_multipliers_2022_{year}.csv",
            f"policyengine-us-data's ACA PTC state multipliers, 2022 to {year} (CMS marketplace "
            "enrollment and average APTC), for --hierarchical-domains aca_ptc",
        )
        for year in ACA_PTC_YEARS
    ),
)
CENSUS_DOCS = f"{_RAW}/census_docs_2024.json"
"""The ACS variable dictionary: read at regeneration to find the S0101/S2201 codes by label."""


# --- regeneration from the installed wheel --------------------------------------------------------


def wheel_root() -> pathlib.Path:
    """The installed ``policyengine_us_data`` package directory, located without importing it
    (importing it imports policyengine-us); ``ModuleNotFoundError`` when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{WHEEL} is not installed (pip install --no-deps {WHEEL})")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def wheel_version() -> str:
    import importlib.metadata

    return importlib.metadata.version(WHEEL)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _read_csv(text: str, *, comment: str | None = None) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if not (comment and line.startswith(comment))]
    return list(csv.DictReader(lines))


def _whole_number(text: str, where: str) -> str:
    """``text`` if it spells a non-negative whole number (ACS annotations such as -666666666 do not)."""
    if text is None or not str(text).isdigit():
        raise ValueError(f"{where}: expected a count, got {text!r}")
    return str(text)


def _acs_codes(docs: dict[str, Any], group: str, labels: dict[str, str]) -> dict[str, str]:
    """``{column: variable code}`` for each ``{column: label}``, from the ACS variable dictionary
    (``ValueError`` when a label names no variable of ``group``, or more than one)."""
    codes: dict[str, list[str]] = {}
    for code, variable in docs["variables"].items():
        if variable.get("group") == group and variable.get("label") in labels.values():
            codes.setdefault(variable["label"], []).append(code)
    wrong = [label for label in labels.values() if len(codes.get(label, [])) != 1]
    if wrong:
        raise ValueError(f"the ACS dictionary has no single {group} variable labelled {wrong}")
    return {column: codes[label][0] for column, label in labels.items()}


def _acs_rows(raw: list[list[Any]], codes: dict[str, str], where: str) -> list[list[str]]:
    header, *rows = raw
    index = {column: header.index(code) for column, code in codes.items()}
    out = []
    for row in rows:
        geo_id = row[header.index("GEO_ID")]
        if geo_id in PUERTO_RICO:
            continue
        out.append([geo_id, *(_whole_number(row[i], f"{where} {geo_id} {c}") for c, i in index.items())])
    return out


def build_extracts(root: str | os.PathLike | None = None, version: str | None = None) -> dict[str, str]:
    """``{extract name: CSV text}`` read from the wheel's files under ``root`` (default: the
    installed wheel, ``version`` its version), plus ``manifest.json``'s text. Deterministic:
    the same files give the same bytes."""
    if root is None:
        root, version = wheel_root(), version or wheel_version()
    root = pathlib.Path(root)
    read = {e.source: (root / e.source).read_bytes() for e in EXTRACTS}
    read[CENSUS_DOCS] = (root / CENSUS_DOCS).read_bytes()
    docs = json.loads(read[CENSUS_DOCS])
    texts: dict[str, str] = {}
    columns: dict[str, dict[str, str]] = {}

    age_labels = {"total": S0101_LABEL} | {
        column: f"{S0101_LABEL}!!AGE!!{label}" for column, (label, _, _) in zip(AGE_COLUMNS, AGE_BANDS)
    }
    age_codes = _acs_codes(docs, "S0101", age_labels)
    for level in ("national", "state", "district"):
        extract = _extract(f"acs_s0101_{level}.csv")
        rows = _acs_rows(json.loads(read[extract.source]), age_codes, extract.source)
        texts[extract.name] = _csv_text(["ucgid", *age_codes], rows)
        columns[extract.name] = age_codes

    snap_codes = _acs_codes(docs, "S2201", {"snap_households": S2201_SNAP_LABEL})
    extract = _extract("acs_s2201_district.csv")
    texts[extract.name] = _csv_text(
        ["ucgid", "snap_households"], _acs_rows(json.loads(read[extract.source]), snap_codes, extract.source)
    )
    columns[extract.name] = snap_codes

    # SOI AGI by state and band: one row per (state, band) with the count and amount rows joined.
    extract = _extract("soi_agi_state.csv")
    bands: dict[tuple[str, str, str, str], dict[str, str]] = {}
    for row in _read_csv(read[extract.source].decode()):
        key = (row["GEO_ID"], row["GEO_NAME"], row["AGI_LOWER_BOUND"], row["AGI_UPPER_BOUND"])
        kind = {"adjusted_gross_income/count": "returns", "adjusted_gross_income/amount": "agi"}[row["VARIABLE"]]
        bands.setdefault(key, {})[kind] = row["VALUE"]
    incomplete = [k for k, v in bands.items() if set(v) != {"returns", "agi"}]
    if incomplete:
        raise ValueError(f"{extract.source}: bands without both a count and an amount: {incomplete[:3]}")
    texts[extract.name] = _csv_text(
        ["ucgid", "state", "agi_lower", "agi_upper", "returns", "agi"],
        [[*key, v["returns"], v["agi"]] for key, v in bands.items()],
    )
    columns[extract.name] = {
        "returns": "VALUE where VARIABLE == adjusted_gross_income/count (SOI N1)",
        "agi": "VALUE where VARIABLE == adjusted_gross_income/amount (SOI A00100 x 1000)",
    }

    extract = _extract("soi_agi_national.csv")
    national: dict[tuple[str, str], dict[str, str]] = {}
    for row in _read_csv(read[extract.source].decode()):
        if (
            row["Year"] == str(SOI_NATIONAL_YEAR)
            and row["SOI table"] == "Table 1.1"
            and row["Filing status"] == "All"
            and row["Taxable only"] == "False"
            and row["Full population"] == "False"
            and row["Variable"] in ("count", "adjusted_gross_income")
        ):
            kind = "returns" if row["Variable"] == "count" else "agi"
            entry = national.setdefault((row["AGI lower bound"], row["AGI upper bound"]), {})
            if kind in entry:
                raise ValueError(f"{extract.source}: two Table 1.1 {kind} rows for the band {row['AGI lower bound']}")
            entry[kind] = row["Value"]
    texts[extract.name] = _csv_text(
        ["agi_lower", "agi_upper", "returns", "agi"],
        [[lo, hi, v["returns"], v["agi"]] for (lo, hi), v in national.items()],
    )
    columns[extract.name] = {
        "returns": f"Value where Year == {SOI_NATIONAL_YEAR}, SOI table == Table 1.1, Variable == count, "
        "Filing status == All, Taxable only == False, Full population == False",
        "agi": "Value, the same rows with Variable == adjusted_gross_income",
    }

    extract = _extract("snap_state.csv")
    rows = _read_csv(read[extract.source].decode())
    texts[extract.name] = _csv_text(
        ["ucgid", "households", "cost"], [[r["GEO_ID"], r["Households"], r["Cost"]] for r in rows]
    )
    columns[extract.name] = {"households": "Households (monthly average)", "cost": "Cost (annual benefits, $)"}

    # Medicaid: the December final report of each state; a state whose is 0 or blank takes its
    # latest earlier non-zero final report (PolicyEngine's ETL does the same).
    extract = _extract("medicaid_state.csv")
    finals: dict[str, list[tuple[int, str]]] = {}
    for row in _read_csv(read[extract.source].decode()):
        state, value = row["State Abbreviation"], row["Total Medicaid Enrollment"]
        if state in STATE_FIPS and row["Final Report"] == "Y" and value and float(value) > 0:
            finals.setdefault(state, []).append((int(row["Reporting Period"]), value))
    medicaid = []
    for state in sorted(STATE_FIPS, key=STATE_FIPS.__getitem__):
        known = [(p, v) for p, v in finals.get(state, []) if p <= MEDICAID_PERIOD]
        if not known:
            raise ValueError(f"{extract.source}: no final Medicaid enrollment report for {state}")
        period, value = max(known)
        medicaid.append([state, period, value])
    texts[extract.name] = _csv_text(["state", "reporting_period", "enrollment"], medicaid)
    columns[extract.name] = {
        "enrollment": f"Total Medicaid Enrollment, Final Report == Y, Reporting Period {MEDICAID_PERIOD} "
        "(else the latest earlier non-zero final report)"
    }

    extract = _extract("eitc_state.csv")
    rows = _read_csv(read[extract.source].decode(), comment="#")
    texts[extract.name] = _csv_text(
        ["ucgid", "returns", "amount"], [[r["GEO_ID"], r["Returns"], r["Amount"]] for r in rows]
    )
    columns[extract.name] = {"returns": "Returns (N59660)", "amount": "Amount (A59660 x 1000, $)"}

    extract = _extract("population_by_state.csv")
    rows = _read_csv(read[extract.source].decode())
    texts[extract.name] = _csv_text(
        ["state", "population"], [[r["state"], r["population"]] for r in rows if r["state"] in STATE_FIPS]
    )
    columns[extract.name] = {"population": "population (the 50 states and DC; Puerto Rico left out)"}

    # ACA PTC multipliers: one row per state, named (2024's file) or abbreviated (2025's).
    for year in ACA_PTC_YEARS:
        extract = _extract(f"aca_ptc_multipliers_{year}.csv")
        rows = _read_csv(read[extract.source].decode())
        texts[extract.name] = _csv_text(
            ["state_fips", "vol_mult", "val_mult"],
            [[STATE_NAME_FIPS.get(r["state"]) or STATE_FIPS[r["state"]], r["vol_mult"], r["val_mult"]] for r in rows],
        )
        columns[extract.name] = {
            "state_fips": "state (a name or an abbreviation) as its FIPS code",
            "vol_mult": "vol_mult (enrollment 2022 to the year)",
            "val_mult": "val_mult (average APTC 2022 to the year)",
        }

    manifest = {
        "wheel": WHEEL,
        "version": version,
        "sources": {path: {"sha256": _sha256(data), "bytes": len(data)} for path, data in sorted(read.items())},
        "extracts": {
            e.name: {
                "source": e.source,
                "table": e.table,
                "columns": columns[e.name],
                "rows": texts[e.name].count("\n") - 1,
                "sha256": _sha256(texts[e.name].encode()),
            }
            for e in EXTRACTS
        },
    }
    texts[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return texts


def _extract(name: str) -> Extract:
    return next(e for e in EXTRACTS if e.name == name)


def regenerate(
    out_dir: str | os.PathLike = DATA_DIR, root: str | os.PathLike | None = None, version: str | None = None
) -> dict[str, str]:
    """Rewrite the extracts and manifest in ``out_dir`` from the wheel; ``{name: sha256}``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = build_extracts(root, version)
    for name, text in texts.items():
        (out_dir / name).write_bytes(text.encode())
    return {name: _sha256(text.encode()) for name, text in texts.items()}


# --- reading the extracts -------------------------------------------------------------------------


def load_manifest(data_dir: str | os.PathLike = DATA_DIR) -> dict[str, Any]:
    return json.loads((pathlib.Path(data_dir) / MANIFEST).read_text())


def verify_extracts(data_dir: str | os.PathLike = DATA_DIR) -> dict[str, Any]:
    """The manifest, after checking every extract's sha256 against it (``ValueError`` if not)."""
    data_dir = pathlib.Path(data_dir)
    manifest = load_manifest(data_dir)
    wrong = [
        name
        for name, entry in manifest["extracts"].items()
        if _sha256((data_dir / name).read_bytes()) != entry["sha256"]
    ]
    if wrong:
        raise ValueError(
            f"vendored extract(s) {', '.join(wrong)} in {data_dir} differ from {MANIFEST}; "
            "rerun python -m builders.real_targets --regenerate"
        )
    return manifest


def read_extract(name: str, data_dir: str | os.PathLike = DATA_DIR) -> list[dict[str, str]]:
    return _read_csv((pathlib.Path(data_dir) / name).read_text())


def cd_geoid(ucgid: str) -> int:
    """A 118th/119th-Congress district GEO_ID as ``state_fips * 100 + district number``
    (at-large ``00`` and DC's delegate ``98`` are district 1), PolicyEngine's convention."""
    if not ucgid.startswith(("5001800US", "5001900US")) or len(ucgid) != 13:
        raise ValueError(f"not a congressional district GEO_ID: {ucgid!r}")
    state, number = int(ucgid[9:11]), int(ucgid[11:13])
    if number in (0, 98):
        number = 1
    return state * 100 + number


def state_fips(ucgid: str) -> int:
    if not ucgid.startswith("0400000US") or len(ucgid) != 11:
        raise ValueError(f"not a state GEO_ID: {ucgid!r}")
    return int(ucgid[9:])


def district_populations(data_dir: str | os.PathLike = DATA_DIR) -> pd.DataFrame:
    """The 436 districts' ACS 2024 total population (S0101_C01_001E) as a ``places`` table
    (``cd_geoid``, ``population``) for :func:`builders.geography.assign_geography`."""
    import pandas as pd

    rows = read_extract("acs_s0101_district.csv", data_dir)
    table = pd.DataFrame(
        {"cd_geoid": [cd_geoid(r["ucgid"]) for r in rows], "population": [float(r["total"]) for r in rows]}
    )
    return table.sort_values("cd_geoid", ignore_index=True)


def state_populations(data_dir: str | os.PathLike = DATA_DIR) -> dict[int, float]:
    """``{state_fips: ACS 2024 total population}`` for the 50 states and DC."""
    return {state_fips(r["ucgid"]): float(r["total"]) for r in read_extract("acs_s0101_state.csv", data_dir)}


def aca_ptc_state_factors(year: int, data_dir: str | os.PathLike = DATA_DIR) -> dict[int, dict[str, float]]:
    """``{state_fips: {"tax_unit_count": vol_mult, "aca_ptc": vol_mult * val_mult}}`` from the
    latest vendored multipliers of a year ``<= year`` (else the earliest): the state factors
    policyengine-us-data's hierarchical uprating gives the ``aca_ptc`` domain's districts."""
    chosen = max((y for y in ACA_PTC_YEARS if y <= year), default=min(ACA_PTC_YEARS))
    factors = {}
    for row in read_extract(f"aca_ptc_multipliers_{chosen}.csv", data_dir):
        volume, value = float(row["vol_mult"]), float(row["val_mult"])
        factors[int(row["state_fips"])] = {"tax_unit_count": volume, "aca_ptc": volume * value}
    return factors


# --- the targets ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RealTarget:
    """One target: the sum of ``variable`` over the records meeting every constraint is ``value``."""

    variable: str
    period: int
    value: float
    constraints: tuple[tuple[str, str, Any], ...]
    series: str
    source: str
    notes: str

    @property
    def geography(self) -> tuple[tuple[str, str, Any], ...]:
        """The constraints that place it (none for the nation); its stratum's parent is that place."""
        return tuple(c for c in self.constraints if c[0] in GEOGRAPHIC_VARIABLES)

    @property
    def geo_level(self) -> str:
        names = {c[0] for c in self.geography}
        if "congressional_district_geoid" in names:
            return "district"
        return "state" if "state_fips" in names else "national"


_FILER = ("tax_unit_is_filer", "==", 1)
_AGI = "adjusted_gross_income"


def _place(ucgid: str) -> tuple[tuple[tuple[str, str, Any], ...], str]:
    if ucgid == "0100000US":
        return (), "US"
    if ucgid.startswith("0400000US"):
        fips = state_fips(ucgid)
        return (("state_fips", "==", fips),), f"State FIPS {fips}"
    geoid = cd_geoid(ucgid)
    return (("congressional_district_geoid", "==", geoid),), f"CD {geoid}"


def _bound(text: str) -> float:
    return float(text)


def _agi_band(lower: str, upper: str) -> tuple[tuple[tuple[str, str, Any], ...], str]:
    lo, hi = _bound(lower), _bound(upper)
    out = []
    if lo != float("-inf"):
        out.append((_AGI, ">=", int(lo)))
    if hi != float("inf"):
        out.append((_AGI, "<", int(hi)))
    shown = f"AGI >= {lo:,.0f}" if lo != float("-inf") else "AGI"
    shown += f", < {hi:,.0f}" if hi != float("inf") else " (no upper bound)"
    return tuple(out), shown


def real_targets(data_dir: str | os.PathLike = DATA_DIR) -> list[RealTarget]:
    """Every target the vendored extracts give, after checking their sha256 against the manifest."""
    data_dir = pathlib.Path(data_dir)
    manifest = verify_extracts(data_dir)
    version = manifest.get("version") or "unknown"
    targets: list[RealTarget] = []

    def origin(name: str, detail: str) -> str:
        entry = manifest["extracts"][name]
        return f"{WHEEL} {version}: {entry['source']} ({detail}); vendored as builders/data/real_targets/{name}"

    # Age bands (person_count), nation, states, districts.
    for level in ("national", "state", "district"):
        name = f"acs_s0101_{level}.csv"
        codes = manifest["extracts"][name]["columns"]
        for row in read_extract(name, data_dir):
            geography, where = _place(row["ucgid"])
            for column, (_, lo, hi) in zip(AGE_COLUMNS, AGE_BANDS):
                age = [("age", ">=", lo)] + ([("age", "<", hi)] if hi is not None else [])
                targets.append(
                    RealTarget(
                        "person_count",
                        ACS_YEAR,
                        float(row[column]),
                        (*geography, *age),
                        f"age {level}",
                        f"Census ACS {ACS_YEAR} 1-year S0101 {codes[column]} ({row['ucgid']})",
                        f"Age: {column}, {where}; " + origin(name, codes[column]),
                    )
                )

    # SNAP households by district (ACS S2201) and by state (USDA FNS), SNAP cost by state.
    name = "acs_s2201_district.csv"
    code = manifest["extracts"][name]["columns"]["snap_households"]
    for row in read_extract(name, data_dir):
        geography, where = _place(row["ucgid"])
        targets.append(
            RealTarget(
                "household_count",
                ACS_YEAR,
                float(row["snap_households"]),
                (*geography, ("snap", ">", 0)),
                "snap households district",
                f"Census ACS {ACS_YEAR} 1-year S2201 {code} ({row['ucgid']})",
                f"Households receiving SNAP, {where}; " + origin(name, code),
            )
        )
    name = "snap_state.csv"
    for row in read_extract(name, data_dir):
        geography, where = _place(row["ucgid"])
        for variable, column, what in (
            ("household_count", "households", "households (monthly average)"),
            ("snap", "cost", "benefits ($)"),
        ):
            targets.append(
                RealTarget(
                    variable,
                    SNAP_STATE_YEAR,
                    float(row[column]),
                    (*geography, ("snap", ">", 0)),
                    f"snap {column} state",
                    f"USDA FNS SNAP FY{SNAP_STATE_YEAR} state {column.capitalize()} ({row['ucgid']})",
                    f"Received SNAP, {where}; SNAP {what}; " + origin(name, column.capitalize()),
                )
            )

    # Medicaid enrollment by state (CMS).
    name = "medicaid_state.csv"
    for row in read_extract(name, data_dir):
        fips = STATE_FIPS[row["state"]]
        geography = (("state_fips", "==", fips),)
        period = int(row["reporting_period"])
        fallback = "" if period == MEDICAID_PERIOD else f" (its {MEDICAID_PERIOD} report is 0: latest earlier one)"
        targets.append(
            RealTarget(
                "person_count",
                period // 100,
                float(row["enrollment"]),
                (*geography, ("medicaid_enrolled", "==", True)),
                "medicaid state",
                f"CMS Medicaid enrollment, Total Medicaid Enrollment, {period} final report ({row['state']})",
                f"Medicaid enrolled, State FIPS {fips}{fallback}; " + origin(name, f"Reporting Period {period}"),
            )
        )

    # SOI AGI by state and band, returns (tax_unit_count of filers) and AGI.
    name = "soi_agi_state.csv"
    for row in read_extract(name, data_dir):
        geography, where = _place(row["ucgid"])
        band, shown = _agi_band(row["agi_lower"], row["agi_upper"])
        for variable, column, soi in (("tax_unit_count", "returns", "N1"), (_AGI, "agi", "A00100")):
            targets.append(
                RealTarget(
                    variable,
                    SOI_STATE_YEAR,
                    float(row[column]),
                    (*geography, _FILER, *band),
                    f"soi agi {column} state",
                    f"IRS SOI state data TY{SOI_STATE_YEAR} (22in55cmcsv) {soi} ({row['state']})",
                    f"Filers, {shown}, {where}; "
                    + origin(name, f"adjusted_gross_income/{'count' if column == 'returns' else 'amount'}"),
                )
            )

    # SOI AGI by band, national (Publication 1304 Table 1.1).
    name = "soi_agi_national.csv"
    for row in read_extract(name, data_dir):
        band, shown = _agi_band(row["agi_lower"], row["agi_upper"])
        if row["agi_upper"] == "0.0":  # "No adjusted gross income": AGI below $1, as the next band starts at $1
            band = ((_AGI, "<", 1),)
            shown = "AGI < 1 (no adjusted gross income)"
        for variable, column, soi in (("tax_unit_count", "returns", "number of returns"), (_AGI, "agi", "AGI")):
            targets.append(
                RealTarget(
                    variable,
                    SOI_NATIONAL_YEAR,
                    float(row[column]),
                    (_FILER, *band),
                    f"soi agi {column} national",
                    f"IRS SOI Publication 1304 Table 1.1 TY{SOI_NATIONAL_YEAR}, {soi}",
                    f"Filers, {shown}, US; " + origin(name, "Table 1.1"),
                )
            )

    # EITC by state: returns with EITC (tax_unit_count with eitc > 0) and the amount.
    name = "eitc_state.csv"
    for row in read_extract(name, data_dir):
        geography, where = _place(row["ucgid"])
        for variable, column, soi, domain in (
            ("tax_unit_count", "returns", "N59660", (("eitc", ">", 0),)),
            ("eitc", "amount", "A59660", ()),
        ):
            targets.append(
                RealTarget(
                    variable,
                    SOI_STATE_YEAR,
                    float(row[column]),
                    (*geography, *domain),
                    f"eitc {column} state",
                    f"IRS SOI Historical Table 2 TY{SOI_STATE_YEAR} (22in55cmcsv) {soi} ({row['ucgid']})",
                    f"EITC {column}, {where}; " + origin(name, soi),
                )
            )
    return targets


def write_real_target_db(
    path: str | os.PathLike,
    targets: Sequence[RealTarget] | None = None,
    *,
    data_dir: str | os.PathLike = DATA_DIR,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write ``targets`` (default: all of :func:`real_targets`) into a target database in
    policy_data.db's schema, under PolicyEngine's strata tree (:func:`builders.target_db.write_target_tree`).

    ``targets.source`` names the publisher's table and variable, ``targets.notes`` the stratum,
    the wheel file and the vendored extract.
    """
    from builders.target_db import write_target_tree

    return write_target_tree(path, real_targets(data_dir) if targets is None else targets, overwrite=overwrite)


def state_subset(targets: Sequence[RealTarget], states: Iterable[int]) -> list[RealTarget]:
    """The targets of ``states`` (FIPS codes) and their districts, with national-level rows that
    the records of those states alone can reach (every target when ``states`` are all 51).

    The national age bands become the states' totals (ACS's state estimates add up to its
    national ones exactly, so for all 51 states this is the national row), noted as such; the
    national SOI bands (Table 1.1's, which no state file splits) are left out.
    """
    states = sorted(set(states))
    unknown = [s for s in states if s not in STATE_CODES]
    if unknown:
        raise ValueError(f"unknown state FIPS code(s) {unknown}; expected the 50 states and DC (11)")
    if len(states) == len(STATE_CODES):
        return list(targets)

    def state_of(target: RealTarget) -> int:
        _, _, value = target.geography[0]
        return int(value) if target.geo_level == "state" else int(value) // 100

    kept = [t for t in targets if t.geo_level != "national" and state_of(t) in states]
    codes = ", ".join(STATE_CODES[s] for s in states)
    totals: dict[tuple, list[RealTarget]] = {}
    for target in kept:
        if target.series == "age state":
            age = tuple(c for c in target.constraints if c not in target.geography)
            totals.setdefault(age, []).append(target)
    national = [
        RealTarget(
            "person_count",
            parts[0].period,
            sum(t.value for t in parts),
            age,
            f"age national ({codes} total)",
            f"sum of {len(parts)} states' {parts[0].source.split(' (')[0]}",
            f"Age: {parts[0].notes.split(',')[0].removeprefix('Age: ')}, the {len(parts)} states {codes} "
            f"(not the US); the sum of their state rows",
        )
        for age, parts in totals.items()
    ]
    return national + kept


def summary(targets: Sequence[RealTarget]) -> dict[str, dict[str, int]]:
    """``{geo_level: {series: count}}``."""
    out: dict[str, dict[str, int]] = {}
    for target in targets:
        level = out.setdefault(target.geo_level, {})
        level[target.series] = level.get(target.series, 0) + 1
    return out


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m builders.real_targets", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite the extracts from the installed {WHEEL}")
    parser.add_argument("--out", type=pathlib.Path, default=DATA_DIR, help="where the extracts go (--regenerate)")
    parser.add_argument("--db", type=pathlib.Path, help="write the target database here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.regenerate:
        for name, digest in regenerate(args.out).items():
            print(f"{digest}  {args.out / name}")
    if args.db is not None:
        write_real_target_db(args.db, data_dir=args.out, overwrite=args.overwrite)
        counts = summary(real_targets(args.out))
        for level, series in counts.items():
            print(f"{level}: {sum(series.values()):,} ({', '.join(f'{k} {v}' for k, v in series.items())})")
        print(f"wrote {args.db}")
    if not args.regenerate and args.db is None:
        parser.print_help()
    return 0


VENDORED_FILES = (*(e.name for e in EXTRACTS), MANIFEST)
"""Every file under :data:`DATA_DIR`."""

if __name__ == "__main__":
    raise SystemExit(_main())
