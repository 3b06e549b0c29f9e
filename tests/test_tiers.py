"""Tier derivation: the selection rule by hand, exactly K records, better than a random K, the command."""

import json

import jax
import numpy as np
import pytest
from _fitting import fit
from _workflow_problem import small_package

import jaxcal
import jaxcal.io
from jaxcal.cli import main
from jaxcal.workflow import derive_tier, refit_subset, select_tier

BUDGET = 60
SEARCH = dict(lambda_l0=list(np.geomspace(1e-2, 1.0, 5)), search_epochs=150, search_rounds=2, refit_epochs=100)


@pytest.fixture(scope="module")
def parent():
    package = small_package()[0]
    model = jaxcal.CalibrationWeights.init(
        package.n_records, key=jax.random.key(0), init_weights=100.0, use_gates=False
    )
    fitted = fit(model, package.target_matrix(), package.target_values, key=jax.random.key(1), epochs=60, lambda_l0=0.0)
    return package, np.asarray(fitted.weights, np.float64)


def test_select_tier_ranks_breaks_ties_by_id_and_keeps_state_floors():
    scores = np.array([3.0, 1.0, 3.0, 2.0, 5.0])
    assert select_tier(scores, 3).tolist() == [0, 2, 4]
    assert select_tier(scores, 2).tolist() == [0, 4]  # records 0 and 2 tie: the lower id wins
    states = np.array([1, 1, 1, 2, 2])
    scores = np.array([5.0, 4.0, 3.0, 1.0, 0.0])
    assert select_tier(scores, 2).tolist() == [0, 1]
    assert select_tier(scores, 2, states=states, state_floor=1).tolist() == [0, 3]
    assert select_tier(scores, 3, states=states, state_floor=1).tolist() == [0, 1, 3]
    assert select_tier(scores, 5, states=np.array([1, 1, 2, 2, 3]), state_floor=2).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="more than the budget"):
        select_tier(scores, 3, states=states, state_floor=2)
    with pytest.raises(ValueError, match="budget"):
        select_tier(scores, 6)


def test_derived_child_keeps_exactly_k_and_beats_random_subsets(parent):
    package, weights = parent
    derivation = derive_tier(package, weights, BUDGET, key=jax.random.key(2), **SEARCH)
    tier = derivation.tier
    assert tier.selected.size == BUDGET and (tier.weights > 0).sum() == BUDGET
    assert np.array_equal(tier.child.matrix.toarray(), package.matrix.toarray()[:, tier.selected])
    # The search bracketed the budget: its ranking fit kept at least BUDGET records, a larger penalty fewer.
    kept = {row["lambda_l0"]: row["records_kept"] for row in derivation.search}
    assert kept[derivation.lambda_l0] >= BUDGET and any(
        k < BUDGET for lam, k in kept.items() if lam > derivation.lambda_l0
    )

    t = package.target_values

    def loss(columns, w):
        return np.sum(((t - package.matrix.astype(np.float64)[:, columns] @ w) / (t + 1)) ** 2)

    child = tier.comparison["child"]
    assert child["full_loss"] == pytest.approx(loss(tier.selected, tier.weights), rel=1e-5)
    assert child["records_kept"] == BUDGET and tier.comparison["parent"]["records_kept"] == package.n_records
    for seed in range(5):
        random = np.sort(np.random.default_rng(seed).choice(package.n_records, BUDGET, replace=False))
        baseline = refit_subset(package, weights, random, key=jax.random.key(2), epochs=SEARCH["refit_epochs"])
        assert child["full_loss"] < 0.5 * baseline.comparison["child"]["full_loss"], seed


def test_derive_command_writes_a_run_that_passes_gates(parent, tmp_path):
    package, weights = parent
    jaxcal.io.save_package(package, tmp_path / "parent.npz")
    np.save(tmp_path / "parent_weights.npy", weights.astype(np.float32))
    run = tmp_path / "mp-60"
    args = [
        "derive",
        "--package",
        str(tmp_path / "parent.npz"),
        "--parent-weights",
        str(tmp_path / "parent_weights.npy"),
        "--budget",
        str(BUDGET),
        "--state-floor",
        "25",
        "--output",
        str(run),
        "--holdout-fraction",
        "0.2",
        "--early-stopping-patience",
        "10",
        "--lambda-l0",
        *map(str, SEARCH["lambda_l0"]),
        "--search-epochs",
        "150",
        "--search-rounds",
        "2",
        "--refit-epochs",
        "40",
    ]
    assert main(args) == 0
    columns = np.load(run / "child_columns.npy")
    child_weights = np.load(run / "calibration_weights.npy")
    assert columns.size == BUDGET and (child_weights > 0).sum() == BUDGET
    states = package.geography["state_fips"][columns]
    assert min(np.bincount(states)[np.unique(states)]) >= 25 and np.unique(states).size == 2
    config = json.loads((run / "unified_run_config.json").read_text())
    assert config["tier"]["budget"] == BUDGET and config["n_records"] == BUDGET
    assert config["holdout"]["stop_reason"] in ("early_stopping", "epochs_exhausted")
    assert config["weight_health"]["count_positive"] == BUDGET
    report = json.loads((run / "tier_report.json").read_text())
    assert report["child"]["records_kept"] == BUDGET and report["parent"]["holdout_loss"] is not None
    child = jaxcal.io.load_package(run / "child_package.npz")
    assert child.n_records == BUDGET and np.array_equal(child.geography["state_fips"], states)
    assert main(["gates", str(run), "--max-holdout-loss", "1e9"]) == 0
    gates = json.loads((run / "artifact_gates.json").read_text())
    assert gates["product"] == "mp-60" and gates["gates"]["records_within_budget"]["metrics"]["limit"] == BUDGET


@pytest.mark.parametrize("groups", [True, False], ids=["target-groups", "every-target-alike"])
def test_derive_and_sweep_weigh_targets_as_fit_does(tmp_path, groups):
    """`derive` and `sweep` weigh policyengine-us-data's target groups equally, as `jaxcal fit`
    does (``--no-target-groups``: every target alike): the parent's train loss in the tier report
    is ``sum_i g_i ((t_i - x_i w) / (t_i + 1))^2`` with ``g_i`` one over the size of target i's
    group, computed here in numpy."""
    from builders.synthetic_problem import synthetic_package

    package = synthetic_package(
        400, n_base=100, n_states=2, n_national=8, per_state=6, per_district=4, nonzeros=(4, 3, 2)
    )
    path = jaxcal.io.save_package(package, tmp_path / "package.npz")
    weights = np.random.default_rng(0).uniform(50, 150, package.n_records)
    np.save(tmp_path / "w.npy", weights)
    flag = [] if groups else ["--no-target-groups"]
    derive = ["derive", "--package", str(path), "--parent-weights", str(tmp_path / "w.npy"), "--budget", "200"]
    fast = ["--lambda-l0", "1e-5", "--search-epochs", "3", "--search-rounds", "1", "--refit-epochs", "3"]
    assert main([*derive, *fast, "--output", str(tmp_path / "derive"), *flag]) == 0
    report = json.loads((tmp_path / "derive" / "tier_report.json").read_text())
    t = package.target_values
    error = (t - package.matrix @ weights) / (t + 1)
    _, group, sizes = np.unique(
        jaxcal.io.policyengine_target_groups(package.targets), return_inverse=True, return_counts=True
    )
    g = 1 / sizes[group] if groups else np.ones_like(t)
    assert sizes.size > 1 and sizes.max() > 1  # the groups weigh targets unequally
    assert report["parent"]["train_loss"] == pytest.approx(float(np.sum(g * error**2)), rel=1e-4)
    assert jaxcal.runs.RunRecord.read(tmp_path / "derive").hyperparameters["target_groups"] is groups
    sweep = ["sweep", "--package", str(path), "--lambda-l0", "1e-4", "--epochs", "3", "--output", str(tmp_path / "s")]
    assert main([*sweep, *flag]) == 0
    assert jaxcal.runs.RunRecord.read(tmp_path / "s").hyperparameters["target_groups"] is groups
