"""``jaxcal diagnose``: support, magnitude, reachability, hierarchy gaps and the bounded least
squares optimum, on hand-built problems whose answers are known (by hand, or from scipy)."""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, sparse

import jaxcal.io
from jaxcal.cli import main
from jaxcal.workflow import diagnose_targets, hierarchy_gaps, solve_bounded_least_squares

COLUMNS = ["variable", "geo_level", "geographic_id", "domain_variable", "value"]


def make_package(matrix, rows, names=None, **extra):
    targets = pd.DataFrame(rows, columns=COLUMNS)
    names = names or [f"{geo}/{variable}" for variable, _, geo, _, _ in rows]
    return jaxcal.io.CalibrationPackage.create(sparse.csr_array(np.asarray(matrix, float)), targets, names, **extra)


@pytest.fixture
def nation_and_states():
    """Records 0-1 live in state 1, 2-3 in state 2; the nation (90) is below its states' sum (110)."""
    matrix = [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]
    rows = [
        ("people", "national", "US", None, 90.0),
        ("people", "state", "1", None, 50.0),
        ("people", "state", "2", None, 60.0),
    ]
    return make_package(matrix, rows, initial_weights=np.ones(4))


def hand_optimum():
    """min ((a+b-90)/90)^2 + ((a-50)/50)^2 + ((b-60)/60)^2 over the states' totals a, b (both end up
    positive, so the bound is inactive): the normal equations, solved directly."""
    n, s1, s2 = 1 / 90**2, 1 / 50**2, 1 / 60**2
    a, b = np.linalg.solve([[n + s1, n], [n, n + s2]], [90 * n + 50 * s1, 90 * n + 60 * s2])
    return np.array([(a + b - 90) / 90, (a - 50) / 50, (b - 60) / 60])


@pytest.mark.parametrize("dense_cells", [None, 0], ids=["nnls", "interior-point"])
def test_nation_below_its_states_conflicts_and_costs_what_the_hand_optimum_says(nation_and_states, dense_cells):
    settings = {} if dense_cells is None else {"dense_cells": dense_cells, "tolerance": 1e-6}
    diagnosis = diagnose_targets(nation_and_states, **settings)
    assert diagnosis.optimum.method == ("nnls" if dense_cells is None else "interior-point")
    assert diagnosis.optimum.converged
    (group,) = diagnosis.groups.to_dict("records")
    assert group["parent"] == "US/people" and group["child_level"] == "state" and group["n_children"] == 2
    assert group["children_sum"] == 110 and group["gap"] == pytest.approx(20 / 90)
    assert group["relation"] == "partition" and group["conflict"]
    table = diagnosis.table
    expected = hand_optimum()
    np.testing.assert_allclose(table["error_at_optimum"], expected, rtol=1e-9, atol=1e-12)
    assert expected[0] > 0 > expected[1] and expected[2] < 0  # the nation above, both states below
    np.testing.assert_allclose(table["cost_share"], expected**2 / (expected**2).sum(), rtol=1e-8)
    np.testing.assert_allclose(table["estimate_at_optimum"], table["value"] * (1 + expected), rtol=1e-9)
    assert diagnosis.optimum_objective == pytest.approx((expected**2).sum(), rel=1e-9)
    assert table["in_conflict"].to_numpy().all() and table["reachable_alone"].to_numpy().all()
    assert table["children_gap"].iloc[0] == pytest.approx(20 / 90) and table["children_gap"].iloc[1:].isna().all()
    assert list(diagnosis.costliest(1)["target_name"]) == ["US/people"]


def test_impossible_rows_magnitude_and_support():
    matrix = np.zeros((4, 200))
    matrix[1, :150] = 2.0  # reachable, but the start is 1000 times too small
    matrix[2, :3] = 1.0  # three records: 1.5% of them
    matrix[3, 180:190] = 1.0  # positive entries only, for a negative target
    rows = [
        ("nothing", "national", "US", None, 5.0),
        ("far", "national", "US", None, 354_000.0),
        ("rare", "national", "US", None, 3.0),
        ("negative", "national", "US", None, -4.0),
    ]
    package = make_package(matrix, rows)
    weights = np.ones(200)
    weights[:3] = 10.0
    table = diagnose_targets(package, weights).table
    assert list(table["reachable_alone"]) == [False, True, True, False]
    assert list(table["support_records"]) == [0, 150, 3, 10]
    np.testing.assert_allclose(table["support_share"], [0, 0.75, 0.015, 0.05])
    np.testing.assert_allclose(table["support_weight_share"], [0, (30 + 147) / 227, 30 / 227, 10 / 227])
    assert table["log10_ratio"].iloc[1] == pytest.approx(-3.0)  # estimate 2 * (3 * 10 + 147) = 354: 1000x low
    assert list(table["magnitude_warning"]) == [True, True, True, False]  # 0 vs 5; 1000x; 30 vs 3
    assert list(table["support_warning"]) == [True, False, False, False]  # 1% of 200 records is 2
    assert table["error_at_optimum"].iloc[0] == pytest.approx(-1.0)  # an all-zero row stays at 0
    assert table["error_at_optimum"].iloc[1:3].abs().max() < 1e-9  # e.g. weights 1 on records 0-2, 1204 on 3-149
    assert table["error_at_optimum"].iloc[3] == pytest.approx(1.0)  # no weight on its records: (0 + 4) / 4


def test_an_explicit_zero_is_not_support():
    matrix = sparse.csr_array((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    package = jaxcal.io.CalibrationPackage.create(
        matrix, pd.DataFrame([("x", "national", "US", None, 1.0)], columns=COLUMNS), ["US/x"]
    )
    assert diagnose_targets(package).table["support_records"].tolist() == [1]


def conflicted_problem(seed=0, n_targets=30, n_records=400, density=0.15):
    """Random sparse non-negative rows plus a few duplicated rows with other targets (conflicts)."""
    rng = np.random.default_rng(seed)
    rows = sparse.csr_array(sparse.random_array((n_targets, n_records), density=density, rng=rng) * 10)
    matrix = sparse.csr_array(sparse.vstack([rows, rows[np.arange(5)]]))
    values = matrix @ rng.uniform(0.5, 2, n_records) * np.exp(rng.normal(0, 0.5, n_targets + 5))
    return matrix, values


def test_optimum_equals_scipys_lsq_linear_and_nnls():
    matrix, values = conflicted_problem()
    scale = np.abs(values)
    a, b = sparse.csr_array(sparse.diags_array(1 / scale) @ matrix), values / scale
    reference = optimize.lsq_linear(a, b, bounds=(0, np.inf), method="trf", lsq_solver="lsmr", tol=1e-14)
    assert reference.success
    interior = solve_bounded_least_squares(matrix, values, scale, np.ones(400), dense_cells=0, tolerance=1e-6)
    assert interior.converged and interior.method == "interior-point" and interior.accuracy <= 1e-6
    assert np.abs(reference.fun).max() > 0.05  # the duplicated rows do conflict
    np.testing.assert_allclose(interior.residuals, reference.fun, atol=1e-10)  # the bound is loose: sqrt(gap)
    assert (interior.weights >= 0).all()
    np.testing.assert_allclose(a @ interior.weights - b, interior.residuals, atol=1e-12)

    small, small_values = conflicted_problem(seed=1, n_targets=8, n_records=20, density=0.5)
    dense = small.toarray() / np.abs(small_values)[:, None]
    exact_weights, _ = optimize.nnls(dense, small_values / np.abs(small_values))
    exact = dense @ exact_weights - small_values / np.abs(small_values)
    for dense_cells in (10**6, 0):
        solved = solve_bounded_least_squares(
            small,
            small_values,
            np.abs(small_values),
            np.ones(20),
            dense_cells=dense_cells,
            tolerance=1e-6,
        )
        assert solved.converged
        np.testing.assert_allclose(solved.residuals, exact, atol=1e-10 if dense_cells == 0 else 1e-13)


def test_states_against_their_districts():
    """District GEOIDs are state * 100 + district. State 1's districts partition it and exceed it;
    state 2 lacks a district (its row holds one more record than its districts'): falling short is
    then no proof, exceeding is; state 6's districts fall short of it by less than the tolerance."""
    records = {"0101": [0, 1], "0102": [2, 3], "0201": [4], "0202": [5], "0601": [7], "0602": [8]}
    state_records = {"1": [0, 1, 2, 3], "2": [4, 5, 6], "6": [7, 8]}
    values = {"0101": 30, "0102": 30, "1": 50, "0201": 20, "0202": 20, "2": 50, "0601": 10, "0602": 9.95, "6": 20}
    rows, matrix = [], []
    for geo, cols in [*state_records.items(), *records.items()]:
        rows.append(("people", "state" if len(geo) == 1 else "district", geo, "age", values[geo]))
        matrix.append(np.isin(np.arange(9), cols).astype(float))
    package = make_package(np.array(matrix), rows)
    groups = hierarchy_gaps(package).set_index("parent")
    assert list(groups.index) == ["1/people", "2/people", "6/people"]
    assert groups.loc["1/people", "gap"] == pytest.approx(0.2)
    assert groups.loc["2/people", "gap"] == pytest.approx(-0.2)
    assert groups.loc["6/people", "gap"] == pytest.approx(-0.0025)
    assert list(groups["relation"]) == ["partition", "nested", ""]
    assert list(groups["conflict"]) == [True, False, False]
    exceeding = package.targets.copy()
    exceeding.loc[exceeding["geographic_id"] == "0201", "value"] = 40.0  # 40 + 20 > 50: nested, proven
    over = jaxcal.io.CalibrationPackage.create(package.matrix, exceeding, package.target_names)
    assert hierarchy_gaps(over).set_index("parent").loc["2/people", "conflict"]


def test_keys_match_by_constraint_and_skip_ambiguous_places():
    rows = [
        ("agi", "national", "US", "agi", 100.0),
        ("agi", "state", "1", "agi", 60.0),
        ("agi", "state", "2", "agi", 60.0),
        ("agi", "national", "US", "agi", 10.0),  # another bracket
        ("agi", "state", "1", "agi", 5.0),
        ("count", "national", "US", None, 1.0),  # ambiguous: two national count targets
        ("count", "national", "US", None, 2.0),
        ("count", "state", "1", None, 5.0),
    ]
    names = [
        "national/agi/[agi<10]",
        "state_1/agi/[agi<10]",
        "state_2/agi/[agi<10]",
        "national/agi/[agi>=10]",
        "state_1/agi/[agi>=10]",
        "national/count",
        "national/count",
        "state_1/count",
    ]
    package = make_package(np.eye(8), rows, names)
    groups = hierarchy_gaps(package)
    assert list(groups["parent"]) == ["national/agi/[agi<10]", "national/agi/[agi>=10]"]
    np.testing.assert_allclose(groups["gap"], [0.2, -0.5])
    assert list(groups["relation"]) == ["other", "other"] and not groups["conflict"].to_numpy().any()


def test_cli_writes_the_table_the_groups_and_the_figure(nation_and_states, tmp_path, capsys):
    path = jaxcal.io.save_package(nation_and_states, tmp_path / "package.npz")
    output = tmp_path / "diagnosis"
    assert main(["diagnose", str(path), "--output", str(output), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(output / "target_diagnosis.csv")
    assert len(table) == 3 and {"support_records", "error_at_optimum", "cost_share", "log10_ratio"} <= set(table)
    np.testing.assert_allclose(table["error_at_optimum"], hand_optimum(), rtol=1e-9)
    groups = pd.read_csv(output / "target_conflicts.csv")
    assert groups["children"].tolist() == ["1/people;2/people"] and groups["conflict"].tolist() == [True]
    assert (output / "target_diagnosis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--- Costliest targets at the optimum (top 2 of 3) ---" in printed
    assert "Conflicting hierarchies: 1 of 1" in printed
    assert "US/people" in printed and "2 state targets exceed it by 22.22%" in printed
    assert f"wrote {output / 'target_diagnosis.csv'}" in printed
    assert "Starting weights: the package's initial weights" in printed


def test_cli_user_mistakes_are_one_line(nation_and_states, tmp_path, capsys):
    path = jaxcal.io.save_package(nation_and_states, tmp_path / "package.npz")
    np.save(tmp_path / "short.npy", np.ones(3))
    output = tmp_path / "out"
    collide = output / "target_diagnosis.csv"
    output.mkdir()
    with open(collide, "wb") as f:
        np.save(f, np.ones(4))
    cases = [
        (["--weights", str(tmp_path / "short.npy")], "must hold 4 finite non-negative weights"),
        (["--weights", str(tmp_path / "missing.npy")], "not found"),
        (["--weights", str(collide)], "would be overwritten"),
        (["--max-iterations", "0"], "--max-iterations"),
        (["--top", "-1"], "--top"),
    ]
    for extra, phrase in cases:
        assert main(["diagnose", str(path), "--output", str(output), *extra]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("jaxcal diagnose: error:") and phrase in error[0], error
    assert sorted(p.name for p in output.iterdir()) == ["target_diagnosis.csv"]


def test_cli_defaults_are_the_librarys():
    import argparse

    from jaxcal.cli import _diagnose
    from jaxcal.workflow import _diagnose as library

    parser = argparse.ArgumentParser().add_subparsers()
    _diagnose.register(parser)
    defaults = parser.choices["diagnose"].parse_args(["package.npz"])
    assert (defaults.max_iterations, defaults.tolerance, defaults.gap_tolerance) == (
        library.MAX_ITERATIONS,
        library.SOLVER_TOLERANCE,
        library.GAP_TOLERANCE,
    )
