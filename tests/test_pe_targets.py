"""PolicyEngine's target selection and loss groups, against policyengine-us-data 1.115.4's own code:
``create_target_groups``, ``apply_target_config`` and its shipped ``target_config.yaml``."""

import contextlib
import io
import pathlib

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcal.io

pe_calibration = pytest.importorskip("policyengine_us_data.calibration")
from policyengine_us_data.calibration import unified_calibration  # noqa: E402
from policyengine_us_data.calibration.calibration_utils import create_target_groups  # noqa: E402

pytestmark = pytest.mark.pe_reference

GEOGRAPHIES = ["US", "6", "36", "1", "601", "3601", "4801", "106"]
DOMAINS = [None, "age", "snap", "adjusted_gross_income", "medicaid_enrolled", "aca_ptc"]
VARIABLES = ["person_count", "snap", "household_count", "adjusted_gross_income", "aca_ptc", "tax_unit_count"]
LEVELS = {"US": "national", "6": "state", "36": "state", "1": "state"}


def targets_table(rows):
    """A targets table as PolicyEngine's builder reads it from SQL: text columns of Python objects,
    None where a target has no domain."""
    geography, domain, variable = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {
            "variable": pd.Series(variable, dtype=object),
            "geo_level": pd.Series([LEVELS.get(g, "district") for g in geography], dtype=object),
            "geographic_id": pd.Series(geography, dtype=object),
            "domain_variable": pd.Series(domain, dtype=object),
            "value": np.arange(1.0, len(rows) + 1),
        }
    )


rows_strategy = st.lists(
    st.tuples(st.sampled_from(GEOGRAPHIES), st.sampled_from(DOMAINS), st.sampled_from(VARIABLES)),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(rows_strategy)
def test_target_groups_are_policyengines(rows):
    targets = targets_table(rows)
    with contextlib.redirect_stdout(io.StringIO()):  # create_target_groups prints its groups
        expected, info = create_target_groups(targets)
    groups = jaxcal.io.policyengine_target_groups(targets)
    np.testing.assert_array_equal(groups, expected)
    assert groups.max() + 1 == len(info)


def test_target_groups_order_levels_then_domains():
    """Hand-computed: national first, then states, then districts; no domain before a domain."""
    targets = targets_table(
        [
            ("601", None, "household_count"),
            ("6", "snap", "household_count"),
            ("US", "age", "person_count"),
            ("36", None, "snap"),
            ("6", None, "snap"),
            ("US", None, "snap"),
            ("3601", "age", "person_count"),
        ]
    )
    np.testing.assert_array_equal(jaxcal.io.policyengine_target_groups(targets), [4, 3, 1, 2, 2, 0, 5])


def test_shipped_target_config_is_policyengines():
    shipped = pathlib.Path(unified_calibration.DEFAULT_TARGET_CONFIG_PATH)
    ours = jaxcal.io.POLICYENGINE_TARGET_CONFIG
    assert yaml.safe_load(ours.read_text()) == yaml.safe_load(shipped.read_text())
    assert jaxcal.io.sha256_file(shipped) in ours.read_text()  # the header names the original's sha256


@settings(max_examples=30, deadline=None)
@given(rows_strategy)
def test_default_target_config_keeps_what_policyengine_keeps(rows):
    targets = targets_table(rows)
    config = unified_calibration.load_target_config(str(unified_calibration.DEFAULT_TARGET_CONFIG_PATH))
    kept, _, _ = unified_calibration.apply_target_config(targets, None, list(range(len(targets))), config)
    ours = jaxcal.io.target_config_mask(targets, jaxcal.io.load_target_config(jaxcal.io.POLICYENGINE_TARGET_CONFIG))
    pd.testing.assert_frame_equal(targets[ours].reset_index(drop=True), kept)
