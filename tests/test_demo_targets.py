"""The demo's real targets: values as policyengine-us ships them, checks that catch bad series."""

from __future__ import annotations

import collections
import datetime
import shutil

import numpy as np
import pytest
import yaml

from builders.demo_targets import (
    STATE_FIPS,
    ImplausibleSeries,
    check_state_series,
    demo_targets,
    write_target_db,
)
from builders.policyengine import calibration_dir
from builders.synthetic_problem import DISTRICTS_PER_STATE

ROOT = calibration_dir()


def _yaml(relpath):
    return yaml.safe_load(open(ROOT / relpath))


@pytest.fixture(scope="module")
def targets():
    return demo_targets(2024)


def _find(targets, variable, *constraints):
    (record,) = [r for r in targets.records if r.variable == variable and set(r.constraints) == set(constraints)]
    return record


def test_kinds_of_targets(targets):
    kinds = collections.Counter((r.variable, r.geo_level) for r in targets.records)
    assert kinds == {
        ("person_count", "national"): 4,  # population, Social Security, SSI and SNAP recipients
        ("tax_unit_count", "national"): 18,  # SOI returns by AGI band
        ("adjusted_gross_income", "national"): 18,
        ("employment_income", "national"): 1,
        ("self_employment_income", "national"): 1,
        ("taxable_interest_income", "national"): 1,
        ("social_security", "national"): 1,
        ("ssi", "national"): 1,
        ("snap", "national"): 1,
        ("eitc", "national"): 1,
        ("person_count", "state"): 102,  # Medicaid and ACA enrollment
        ("aca_ptc", "state"): 51,
    }
    assert all(r.period == 2024 and np.isfinite(r.value) and r.value > 0 for r in targets.records)
    assert all(r.source.startswith("calibration/gov/") for r in targets.records)


def test_values_are_the_shipped_ones(targets):
    # Dated in 2024: taken as is.
    assert _find(targets, "person_count").value == 346_588_000
    medicaid_ca = _find(targets, "person_count", ("medicaid_enrolled", "==", 1), ("state_fips", "==", 6))
    assert medicaid_ca.value == _yaml("gov/hhs/medicaid/totals/enrollment.yaml")["CA"][datetime.date(2024, 10, 1)]
    aca_fl = _find(targets, "aca_ptc", ("state_fips", "==", 12))
    assert aca_fl.value == 27_387_050_134
    # Older values carried forward by their own uprating parameter, as PolicyEngine does.
    population = {d.year: v for d, v in _yaml("gov/census/populations/total.yaml")["values"].items()}
    returns_1 = _yaml("gov/irs/soi/agi/number_of_returns.yaml")["brackets"][1]["amount"]["values"]
    band = _find(
        targets,
        "tax_unit_count",
        ("tax_unit_is_filer", "==", 1),
        ("adjusted_gross_income", ">=", 5_000),
        ("adjusted_gross_income", "<", 10_000),
    )
    assert band.value == pytest.approx(8_944_908 * population[2024] / population[2021], rel=1e-12)
    assert list(returns_1.values()) == [8_944_908]
    assert "uprated to 2024 by calibration.gov.census.populations.total" in band.notes
    ssi_recipients = _find(targets, "person_count", ("ssi", ">", 0))
    assert ssi_recipients.value == pytest.approx(7_407_730 * population[2024] / population[2022], rel=1e-12)


def test_scrambled_state_populations_are_left_out(targets):
    (excluded,) = targets.excluded
    assert excluded.series == "gov/census/populations/by_state.yaml"
    # Florida is given 689,545 people (DC's count) for 28 House seats.
    assert "FL 689,545 (0.03x)" in excluded.reason
    assert not any(r.source.startswith("calibration/gov/census/populations/by_state") for r in targets.records)
    assert any(c.startswith("gov/hhs/medicaid/totals/enrollment.yaml: 51 states") for c in targets.checks)


def test_state_check_accepts_seat_proportional_and_rejects_permuted():
    rng = np.random.default_rng(0)
    seats = {code: DISTRICTS_PER_STATE[fips] for code, fips in STATE_FIPS.items()}
    sound = {code: n * 760_000 * rng.uniform(0.8, 1.2) for code, n in seats.items()}
    assert check_state_series(sound, name="sound", share_bounds=(0.6, 1.45)).startswith("sound: 51 states")
    codes = sorted(sound)
    permuted = dict(zip(codes, rng.permutation([sound[c] for c in codes]), strict=True))
    with pytest.raises(ImplausibleSeries, match="permuted: .* state\\(s\\) hold a share"):
        check_state_series(permuted, name="permuted", share_bounds=(0.6, 1.45))
    with pytest.raises(ImplausibleSeries, match=r"states missing \['WY'\]"):
        check_state_series({c: v for c, v in sound.items() if c != "WY"}, name="x", share_bounds=(0.6, 1.45))


def test_a_corrupted_series_is_excluded_with_its_reason(tmp_path):
    root = tmp_path / "calibration"
    shutil.copytree(ROOT, root)
    path = root / "gov/cbo/snap.yaml"
    text = path.read_text().replace("2024-01-01: 93_730_290_000", "2024-01-01: 937_302_900_000")  # a 10x typo
    assert text != path.read_text()
    path.write_text(text)
    result = demo_targets(2024, root=root)
    reasons = {e.series: e.reason for e in result.excluded}
    assert reasons["gov/cbo/snap.yaml"].startswith("snap per recipient is 2.229e+04, outside the plausible 1,000-4,000")
    assert not any(r.variable == "snap" or ("snap", ">", 0) in r.constraints for r in result.records)
    assert len(result.records) == len(demo_targets(2024).records) - 2


def test_target_database_round_trip(tmp_path, targets):
    from builders.target_db import read_targets

    path = write_target_db(targets, tmp_path / "targets.db")
    table, constraints = read_targets(path, 2024)
    assert len(table) == len(targets.records)
    np.testing.assert_allclose(table["value"], [r.value for r in targets.records], rtol=1e-12)
    assert list(table["source"]) == [r.source for r in targets.records]
    medicaid = table[table["domain_variable"] == "medicaid_enrolled"]
    assert len(medicaid) == 51 and set(medicaid["geo_level"]) == {"state"}
    assert sorted(medicaid["geographic_id"].astype(int)) == sorted(STATE_FIPS.values())
    bands = table[(table["variable"] == "tax_unit_count") & (table["domain_variable"] == "adjusted_gross_income")]
    assert len(bands) == 18 and set(bands["geo_level"]) == {"national"}
    # Returns and AGI of a band share one stratum.
    agi = table[table["variable"] == "adjusted_gross_income"]
    assert list(agi["stratum_id"]) == list(bands["stratum_id"])
