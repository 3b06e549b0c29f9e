"""policyengine-us-data as the reference of ``jaxcal fit``: a package shaped like the ones its
``unified_calibration --build-only --all-active-targets`` writes, made with its own code where
it has any (geography assignment, target names, initial weights, the pickle), and its CLI run on
such a package in-process.

The package is synthetic: households with ages, incomes and benefits, cloned and placed in
census blocks of five states (one district at large), and targets that a hidden weight vector
almost reaches. Target families carry a bias each (survey and administrative totals disagree)
and every target some noise, so the levels pull against each other and the target groups decide
who wins; some rows are impossible (nothing in the matrix), and about a fifth of the rows are
ones PolicyEngine's default ``target_config.yaml`` leaves out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
from scipy import sparse

STATES = {1: 3, 6: 4, 36: 3, 48: 4, 56: 1}
"""State FIPS -> congressional districts: AL, CA, NY, TX and WY (at large)."""
MEDICAID_EXPANSION = {1: False, 6: True, 36: True, 48: False, 56: False}
SNAP_LEVEL = {1: 0.9, 6: 1.15, 36: 1.1, 48: 0.95, 56: 0.85}
STATE_INCOME_TAX_RATE = {1: 0.04, 6: 0.06, 36: 0.055, 48: 0.0, 56: 0.0}
NO_MARKETPLACE_RECORDS = (1, 56)
"""States where no clone gets ACA PTC: their districts' ACA targets are impossible."""
AGE_BINS = ((0, 5), (5, 18), (18, 35), (35, 50), (50, 65), (65, None))
AGI_BRACKETS = ((None, 25_000), (25_000, 50_000), (50_000, 100_000), (100_000, None))
FILER = ("tax_unit_is_filer", "==", "1")
UPRATING = {2022: (1.0834, 1.0187), 2023: (1.0417, 1.0094), 2024: (1.0, 1.0)}
"""Target period -> PolicyEngine's uprating factor to 2024 for dollars and for counts."""
PE_OUTPUT_LINES = (
    "OUTPUT_PATH",
    "GEOGRAPHY_PATH",
    "BLOCKS_PATH",
    "GEO_LABELS_PATH",
    "CONFIG_PATH",
    "LOG_PATH",
    "CAL_LOG_PATH",
)
"""What PolicyEngine's CLI prints as ``KEY:path`` lines (``CAL_LOG_PATH`` with ``--log-freq``)."""
WEIGHTS = "calibration_weights.npy"
TEXT_COLUMNS = ("variable", "geo_level", "geographic_id", "domain_variable")
"""Object columns, a missing domain None: what pandas 2's ``read_sql`` gives PolicyEngine's builder
(pandas 3 gives NaN, which ``create_target_groups`` would put into group 0 with the first targets)."""


@dataclasses.dataclass(frozen=True)
class _Family:
    """Targets of one variable and domain at one geographic level, one per geography."""

    level: str
    variable: str
    domain: str | None
    rows: list[tuple[list[tuple[str, str, str]], np.ndarray, np.ndarray]]
    """(constraints, true per-column value, simulated per-column value) for each target."""
    period: int = 2024
    reform_id: int = 0


def write_pe_package(
    path: str | pathlib.Path,
    *,
    n_base_records: int = 1000,
    n_clones: int = 6,
    seed: int = 0,
    household_weight: float = 60.0,
    family_bias_sd: float = 0.1,
    target_noise_sd: float = 0.05,
) -> dict[str, Any]:
    """Write a PolicyEngine calibration package (a pickle, by PolicyEngine's ``save_calibration_package``)
    to ``path`` and return it as that pickle holds it.

    Geography comes from PolicyEngine's ``assign_random_geography`` (clones of a record in
    different districts) on a synthetic block table; ``targets_df`` has the columns, order,
    ``geographic_id`` text and ``None`` domains of its matrix builder; the matrix is float32 CSR;
    ``initial_weights`` are its ``compute_initial_weights``.
    """
    from policyengine_us_data.calibration.unified_calibration import (
        _utc_now_isoformat,
        compute_initial_weights,
        get_git_provenance,
        save_calibration_package,
    )
    from policyengine_us_data.utils.manifest import compute_file_checksum

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    geography = _assign_geography(path.parent, n_base_records, n_clones, seed)
    state = np.asarray(geography.state_fips)
    cd = np.asarray(geography.cd_geoid, dtype=str)
    households = _households(rng, n_base_records)
    columns = {name: np.tile(values, n_clones) for name, values in households.items()}
    true_weights = (
        household_weight * rng.lognormal(0, 0.5, state.size) * np.tile(rng.lognormal(0, 0.2, n_base_records), n_clones)
    )

    records, matrix_rows = [], []
    strata: dict[tuple, int] = {}
    for family in _families(columns, state):
        bias = rng.normal(0, family_bias_sd)
        uprating = UPRATING[family.period][1 if family.variable.endswith("_count") else 0]
        for geographic_id, geo_constraint, in_geo in _geographies(family.level, state, cd):
            for constraints, truth, simulated in family.rows:
                stratum = tuple([geo_constraint] if geo_constraint else []) + tuple(constraints)
                row = np.where(in_geo, simulated, 0).astype(np.float32)
                value = float(np.where(in_geo, truth, 0) @ true_weights) * np.exp(bias + rng.normal(0, target_noise_sd))
                matrix_rows.append(sparse.csr_matrix(row))
                records.append(
                    {
                        "target_id": len(records) + 1,
                        "stratum_id": strata.setdefault(stratum, len(strata) + 1),
                        "variable": family.variable,
                        "reform_id": family.reform_id,
                        "value": value,
                        "period": family.period,
                        "geo_level": family.level,
                        "geographic_id": geographic_id,
                        "domain_variable": family.domain,
                        "original_value": value / uprating,
                        "uprating_factor": uprating,
                        "_constraints": stratum,
                    }
                )
    table = pd.DataFrame(records).astype({name: object for name in TEXT_COLUMNS})
    table["domain_variable"] = pd.Series([r["domain_variable"] for r in records], dtype=object)
    targets_df, X_sparse, target_names = _in_builder_order(table, sparse.vstack(matrix_rows, "csr"))

    inputs = {}
    for role, name in (("dataset", "source_imputed_stratified_extended_cps_2024.h5"), ("db", "policy_data.db")):
        placeholder = path.parent / name  # stands in for the build's input, which the metadata hashes
        placeholder.write_bytes(f"placeholder {role} of a synthetic package, seed {seed}\n".encode())
        inputs[f"{role}_path"], inputs[f"{role}_sha256"] = str(placeholder), compute_file_checksum(placeholder)
    with contextlib.chdir(path.parent):  # git provenance of the (non-repository) build directory
        provenance = get_git_provenance()
    metadata = {
        "dataset_path": inputs["dataset_path"],
        "db_path": inputs["db_path"],
        "n_clones": n_clones,
        "n_records": X_sparse.shape[1],
        "base_n_records": n_base_records,
        "seed": seed,
        "created_at": _utc_now_isoformat(),
        "target_config_path": None,
        "package_scope": "all_active_targets",
        "matrix_builder": "precompute",
        "chunk_size": None,
        "chunk_dir": None,
        **provenance,
        "dataset_sha256": inputs["dataset_sha256"],
        "db_sha256": inputs["db_sha256"],
    }
    initial_weights = compute_initial_weights(X_sparse, targets_df)
    block_geoid = np.asarray(geography.block_geoid, dtype=object)  # pandas 2's .values (pandas 3: a StringArray)
    save_calibration_package(
        str(path),
        X_sparse,
        targets_df,
        target_names,
        metadata,
        initial_weights=initial_weights,
        cd_geoid=geography.cd_geoid,
        block_geoid=block_geoid,
    )
    return {
        "X_sparse": X_sparse,
        "targets_df": targets_df,
        "target_names": target_names,
        "metadata": metadata,
        "initial_weights": initial_weights,
        "cd_geoid": geography.cd_geoid,
        "block_geoid": block_geoid,
    }


def _assign_geography(directory: pathlib.Path, n_base_records: int, n_clones: int, seed: int):
    """PolicyEngine's ``assign_random_geography`` on a synthetic ``block_cd_distributions.csv.gz``
    (four blocks a district, two counties a district; WY's at-large district written ``5600``, as
    the Census does, which PolicyEngine renumbers ``5601``)."""
    from policyengine_us_data.calibration import clone_and_assign

    rng = np.random.default_rng(seed + 1)
    blocks = []
    for state, n_districts in STATES.items():
        for district in range(1, n_districts + 1):
            for block in range(4):
                county = 2 * district - 1 + block // 2
                blocks.append(
                    {
                        "block_geoid": f"{state:02d}{county:03d}{1000 + 10 * district + block:06d}{1001 + block:04d}",
                        "cd_geoid": state * 100 + (0 if n_districts == 1 else district),
                        "population": int(rng.integers(500, 3000)),
                    }
                )
    table = directory / "block_cd_distributions.csv.gz"
    pd.DataFrame(blocks).to_csv(table, index=False)
    clone_and_assign.load_global_block_distribution.cache_clear()
    try:
        with mock.patch.object(clone_and_assign, "STORAGE_FOLDER", directory):
            return clone_and_assign.assign_random_geography(n_records=n_base_records, n_clones=n_clones, seed=seed)
    finally:
        clone_and_assign.load_global_block_distribution.cache_clear()


def _households(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Base households: persons by age bin, AGI, tax units and benefits before state rules."""
    size = rng.integers(1, 6, n)
    ages = np.stack([rng.multinomial(k, [0.06, 0.16, 0.2, 0.2, 0.2, 0.18]) for k in size]).astype(float)
    kids = ages[:, :2].sum(1)
    agi = np.where(rng.random(n) < 0.05, 0.0, rng.lognormal(np.log(55_000), 1.0, n))
    low = agi < 40_000
    return {
        "persons": size.astype(float),
        **{f"age_{k}": ages[:, k] for k in range(len(AGE_BINS))},
        "agi": agi,
        "tax_units": 1.0 + ((size >= 3) & (rng.random(n) < 0.3)),
        "eitc": np.where((agi < 55_000) & (kids > 0), rng.uniform(500, 7_000, n), np.where(agi < 20_000, 300.0, 0.0)),
        "snap": np.where((agi < 35_000) & (rng.random(n) < 0.6), rng.uniform(1_500, 7_000, n) * size / 2, 0.0),
        "medicaid_enrolled": rng.binomial(size, np.where(low, 0.8, 0.05)).astype(float),
        "aca_ptc": np.where((agi > 25_000) & (agi < 100_000) & (rng.random(n) < 0.08), rng.uniform(2_000, 9_000, n), 0),
        "income_tax": np.maximum(0.0, 0.18 * (agi - 35_000)),
        "ssi": np.where((agi < 30_000) & (rng.random(n) < 0.04), rng.uniform(3_000, 10_000, n), 0.0),
        "rent": np.where(rng.random(n) < 0.35, rng.uniform(9_000, 30_000, n), 0.0),
        "net_worth": rng.lognormal(np.log(150_000), 1.5, n),
        "salt": np.where(agi > 100_000, 0.06 * agi, 0.0),
        "rental_income": np.where(rng.random(n) < 0.1, rng.lognormal(9, 1, n), 0.0),
        "taxable_social_security": ages[:, 5] * rng.uniform(3_000, 15_000, n),
        "pregnant": ((ages[:, 2] + ages[:, 3] > 0) & (rng.random(n) < 0.03)).astype(float),
        "mortgage_interest": np.where(rng.random(n) < 0.25, rng.uniform(2_000, 15_000, n), 0.0),
    }


def _families(c: dict[str, np.ndarray], state: np.ndarray) -> list[_Family]:
    """The target families: what PolicyEngine's default target config keeps (district age,
    AGI, household, EITC and ACA targets; state SNAP, Medicaid, AGI, income tax and EITC;
    national aggregates and AGI brackets) and some it drops (district SNAP dollars, state age,
    state income tax, pregnancy counts, national rental income, taxable Social Security, person
    counts by AGI and mortgage interest). Benefits depend on the clone's state: Medicaid
    eligibility, SNAP levels, state income tax, and ACA PTC, which no clone in AL or WY gets."""
    expansion = np.vectorize(MEDICAID_EXPANSION.get)(state)
    medicaid = np.where(expansion | (c["agi"] < 20_000), c["medicaid_enrolled"], 0.0)
    snap = c["snap"] * np.vectorize(SNAP_LEVEL.get)(state)
    aca = np.where(np.isin(state, NO_MARKETPLACE_RECORDS), 0.0, c["aca_ptc"])
    aca_units = c["tax_units"] * (c["aca_ptc"] > 0)
    state_tax = c["agi"] * np.vectorize(STATE_INCOME_TAX_RATE.get)(state)
    zero = np.zeros_like(c["agi"])

    def same(values, constraints=()):
        return [(list(constraints), values, values)]

    def by_age(level):
        return _Family(
            level,
            "person_count",
            "age",
            [(_range("age", lo, hi), c[f"age_{k}"], c[f"age_{k}"]) for k, (lo, hi) in enumerate(AGE_BINS)],
        )

    def by_agi(level, variable, per_household, period=2023):
        rows = []
        for lo, hi in AGI_BRACKETS:
            values = per_household * (c["agi"] >= (lo or -np.inf)) * (c["agi"] < (hi or np.inf))
            rows.append(([FILER, *_range("adjusted_gross_income", lo, hi)], values, values))
        return _Family(level, variable, "adjusted_gross_income", rows, period)

    return [
        by_age("district"),
        by_agi("district", "person_count", c["persons"]),
        _Family("district", "household_count", None, same(np.ones_like(zero))),
        _Family("district", "household_count", "snap", same(1.0 * (snap > 0), [("snap", ">", "0")])),
        _Family("district", "adjusted_gross_income", None, same(c["agi"], [FILER]), 2023),
        _Family("district", "eitc", None, same(c["eitc"], [FILER]), 2023),
        _Family("district", "aca_ptc", None, [([FILER], c["aca_ptc"], aca)], 2023),
        _Family(
            "district",
            "tax_unit_count",
            "aca_ptc",
            [([FILER, ("aca_ptc", ">", "0")], aca_units, aca_units * (aca > 0))],
        ),
        _Family("district", "snap", None, same(snap)),
        _Family("state", "snap", None, same(snap)),
        _Family("state", "household_count", "snap", same(1.0 * (snap > 0), [("snap", ">", "0")])),
        _Family("state", "person_count", "medicaid_enrolled", same(medicaid, [("medicaid_enrolled", "==", "True")])),
        _Family("state", "adjusted_gross_income", None, same(c["agi"], [FILER]), 2023),
        _Family("state", "income_tax", None, same(c["income_tax"], [FILER]), 2023),
        _Family("state", "eitc", None, same(c["eitc"], [FILER]), 2023),
        by_age("state"),
        _Family("state", "state_income_tax", None, same(state_tax), 2022),
        _Family("state", "person_count", "is_pregnant", [([("is_pregnant", "==", "True")], c["pregnant"], zero)]),
        _Family("national", "person_count", "medicaid_enrolled", same(medicaid, [("medicaid_enrolled", "==", "True")])),
        _Family("national", "snap", None, same(snap)),
        _Family("national", "adjusted_gross_income", None, same(c["agi"], [FILER]), 2023),
        by_agi("national", "tax_unit_count", c["tax_units"]),
        by_agi("national", "adjusted_gross_income", c["agi"]),
        _Family("national", "ssi", None, same(c["ssi"])),
        _Family("national", "rent", None, same(c["rent"]), 2023),
        _Family("national", "net_worth", None, same(c["net_worth"]), 2022),
        _Family("national", "medicaid", None, same(medicaid * 8_000)),
        _Family("national", "salt_deduction", None, same(c["salt"]), reform_id=1),
        _Family("national", "rental_income", None, same(c["rental_income"], [FILER]), 2022),
        _Family("national", "taxable_social_security", None, same(c["taxable_social_security"], [FILER]), 2022),
        by_agi("national", "person_count", c["persons"]),
        _Family("national", "deductible_mortgage_interest", None, [([FILER], c["mortgage_interest"], zero)], 2022),
    ]


def _range(variable: str, lo: float | None, hi: float | None) -> list[tuple[str, str, str]]:
    return ([] if lo is None else [(variable, ">=", str(lo))]) + ([] if hi is None else [(variable, "<", str(hi))])


def _geographies(level: str, state: np.ndarray, cd: np.ndarray):
    """``(geographic_id, geographic constraint, columns there)`` for every geography of ``level``."""
    if level == "national":
        yield "US", None, np.ones(state.size, bool)
    elif level == "state":
        for fips in STATES:
            yield str(fips), ("state_fips", "==", str(fips)), state == fips
    else:
        for geoid in sorted(set(cd)):
            yield geoid, ("congressional_district_geoid", "==", geoid), cd == geoid


def _in_builder_order(targets: pd.DataFrame, matrix: sparse.csr_matrix):
    """The rows sorted and named as ``UnifiedMatrixBuilder.build_matrix`` does."""
    from policyengine_us_data.calibration.calibration_utils import get_geo_level
    from policyengine_us_data.calibration.unified_matrix_builder import UnifiedMatrixBuilder

    targets["_geo_level"] = targets["geographic_id"].apply(get_geo_level)
    targets = targets.sort_values(["_geo_level", "variable", "reform_id", "geographic_id"])
    order = targets.index.to_numpy()
    names = [
        UnifiedMatrixBuilder._make_target_name(
            variable, [dict(zip(("variable", "operation", "value"), c)) for c in constraints], reform_id
        )
        for variable, constraints, reform_id in zip(targets["variable"], targets["_constraints"], targets["reform_id"])
    ]
    targets = targets.drop(columns=["_geo_level", "_constraints"]).reset_index(drop=True)
    matrix = matrix[order].tocsr()
    matrix.eliminate_zeros()
    return targets, matrix.astype(np.float32), names


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """What a ``--package-path`` fit left in its output directory, read back."""

    directory: pathlib.Path
    weights: np.ndarray
    run_config: dict[str, Any]
    diagnostics: pd.DataFrame

    @property
    def mean_error_pct(self) -> float:
        return float(self.run_config["mean_error_pct"])

    @property
    def weight_nonzero(self) -> int:
        return int(self.run_config["weight_nonzero"])


def read_outputs(directory: str | pathlib.Path) -> RunOutputs:
    directory = pathlib.Path(directory)
    return RunOutputs(
        directory=directory,
        weights=np.load(directory / WEIGHTS),
        run_config=json.loads((directory / "unified_run_config.json").read_text()),
        diagnostics=pd.read_csv(directory / "unified_diagnostics.csv"),
    )


def run_pe_main(
    package_path: str | pathlib.Path, output_dir: str | pathlib.Path, *args: str, torch_seed: int
) -> RunOutputs:
    """policyengine-us-data's ``unified_calibration.main`` on ``package_path`` with ``args``,
    writing into ``output_dir`` (also its working directory, so that its git probes see no
    repository). Its fit draws from torch's global generator, seeded here with ``torch_seed``."""
    import torch
    from policyengine_us_data.calibration import unified_calibration

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster at this size, and two test workers do not fight over the cores
    torch.manual_seed(torch_seed)
    try:
        with contextlib.chdir(output_dir):
            unified_calibration.main(
                ["--package-path", str(package_path), "--output", str(output_dir / WEIGHTS), *args]
            )
    finally:
        torch.set_num_threads(threads)
    return read_outputs(output_dir)


def run_jaxcal_fit(
    package_path: str | pathlib.Path, output_dir: str | pathlib.Path, *args: str, seed: int
) -> RunOutputs:
    """``jaxcal fit --package-path PACKAGE --allow-pickle --output OUTPUT_DIR/calibration_weights.npy
    --seed SEED ARGS``, in ``output_dir`` as :func:`run_pe_main` runs; a non-zero exit fails."""
    from jaxcal.cli import main

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(output_dir):
        argv = ["fit", "--package-path", str(package_path), "--allow-pickle", "--output", str(output_dir / WEIGHTS)]
        code = main([*argv, "--seed", str(seed), *args])
    if code != 0:
        raise AssertionError(f"jaxcal fit {' '.join(args)} exited with {code}")
    return read_outputs(output_dir)
