"""The synthetic PolicyEngine-shaped problems: structure as documented, and clear errors."""

import numpy as np
import pytest

from builders.synthetic_problem import DISTRICTS_PER_STATE, policyengine_shaped_problem, synthetic_package


def test_each_record_touches_the_documented_rows():
    problem = policyengine_shaped_problem(
        300, n_base=100, n_states=2, n_national=10, per_state=6, per_district=5, nonzeros=(4, 3, 2), seed=1
    )
    n_districts = sum(DISTRICTS_PER_STATE[s] for s in sorted(DISTRICTS_PER_STATE)[:2])
    assert problem.matrix.shape == (10 + 2 * 6 + n_districts * 5, 300)
    np.testing.assert_array_equal(np.diff(problem.matrix.tocsc().indptr), 4 + 3 + 2)
    # Clone k of a record has the record's national values.
    national = problem.matrix[:10].toarray()
    np.testing.assert_array_equal(national[:, 0], national[:, 100])
    assert set(np.unique(problem.state_fips)) <= set(sorted(DISTRICTS_PER_STATE)[:2])
    assert all(cd[:2] == f"{s:02d}" for cd, s in zip(problem.cd_geoid, problem.state_fips, strict=True))


def test_package_rows_follow_the_matrix():
    package = synthetic_package(
        200, n_base=50, n_states=1, n_national=4, per_state=4, per_district=2, nonzeros=(2, 2, 1)
    )
    assert list(package.targets["geo_level"]) == ["national"] * 4 + ["state"] * 4 + ["district"] * 2 * 7
    assert package.target_names[4] == "state/1/person_count[age]"


def test_too_many_nonzeros_per_level_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot touch 12 of the 4 district rows"):
        policyengine_shaped_problem(100, per_district=4)
