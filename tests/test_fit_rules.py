"""``jaxcal fit --exclude-from-fit`` and ``--fail-if``: targets left out of the loss but reported, and
tolerance rules that fail a run; against the fit of the package without those targets."""

import json

import numpy as np
import pandas as pd
import pytest

import jaxcal.io
from builders.synthetic_problem import synthetic_package
from jaxcal.cli import main
from jaxcal.cli._fit import headline
from jaxcal.runs import FitPlan, RunRecord, ToleranceRule, fit_objective, resolve_hyperparameters

SMALL = dict(n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5)
FIT = ["--epochs", "30", "--all-active-targets", "--lambda-l0", "0", "--quiet"]


@pytest.fixture(scope="module")
def package():
    return synthetic_package(600, **SMALL)


@pytest.fixture(scope="module")
def package_path(package, tmp_path_factory):
    return jaxcal.io.save_package(package, tmp_path_factory.mktemp("package") / "package.npz")


def national_income(package):
    """The rows the rule ``variable=v1_income,geo_level=national`` matches."""
    targets = package.targets
    return ((targets["variable"] == "v1_income") & (targets["geo_level"] == "national")).to_numpy()


def read_run(directory):
    record = json.loads((directory / "unified_run_config.json").read_text())
    return record, pd.read_csv(directory / "unified_diagnostics.csv")


@pytest.mark.parametrize("groups", [[], ["--no-target-groups"]], ids=["target-groups", "every-target-alike"])
def test_excluded_targets_weigh_nothing_and_are_reported(package, package_path, tmp_path, capsys, groups):
    """A fit excluding targets has the weights of a fit of the package without them, and its
    outputs still hold them, with the estimates those weights give."""
    excluded = national_income(package)
    assert 0 < excluded.sum() < package.n_targets
    reduced = jaxcal.io.save_package(package.select_targets(~excluded), tmp_path / "reduced.npz")
    rule = "variable=v1_income,geo_level=national"
    run, alone = tmp_path / "run" / "w.npy", tmp_path / "alone" / "w.npy"
    assert main(["fit", "--package-path", str(package_path), "--output", str(run), *FIT, *groups]) == 0
    capsys.readouterr()
    plain = RunRecord.read(run.parent)
    assert f"(achievable targets), records kept {plain.weight_nonzero:,}, " in headline(plain)
    args = ["fit", "--package-path", str(package_path), "--output", str(run), "--exclude-from-fit", rule]
    assert main([*args, *FIT[:-1], *groups]) == 0
    printed = capsys.readouterr().out
    assert main(["fit", "--package-path", str(reduced), "--output", str(alone), *FIT, *groups]) == 0
    np.testing.assert_allclose(np.load(run), np.load(alone), rtol=1e-5)  # float32 sums in other orders

    record, diagnostics = read_run(run.parent)
    assert list(diagnostics["target"]) == list(package.target_names)  # every target, the excluded among them
    weights = np.load(run).astype(np.float64)
    np.testing.assert_allclose(diagnostics["estimate"], package.matrix.astype(np.float64) @ weights, rtol=1e-9)
    summary = record["excluded_from_fit"]
    assert summary["rules"] == [{"variable": "v1_income", "geo_level": "national"}]
    assert summary["n_targets"] == excluded.sum()
    assert summary["targets"] == [name for name, out in zip(package.target_names, excluded) if out]
    left_out = diagnostics.loc[excluded, "abs_rel_error"]
    assert summary["mean_error_pct"] == pytest.approx(100 * left_out.mean())
    fitted = diagnostics.loc[~excluded, "abs_rel_error"]
    assert record["mean_error_pct"] == pytest.approx(100 * fitted.mean())  # the headline: fitted targets only
    assert record["hyperparameters"]["exclude_from_fit"] == summary["rules"]
    assert f"(fitted achievable targets), records kept {record['weight_nonzero']:,}, " in printed
    assert (
        f"excluded from the fit: {excluded.sum()} targets, mean rel error {summary['mean_error_pct']:.2f}%" in printed
    )


def test_exclusion_survives_a_held_out_split(package, tmp_path):
    """The objective a held-out fit trains on (a row selection) still gives excluded targets 0, and
    the others weigh what they would in a fit of the package without them: state 2's v1_income
    weighs 1, not the 1/2 it shares with state 1's in their target group."""
    hyper = resolve_hyperparameters({"epochs": 5})
    settings = dict(package_path=tmp_path / "p.npz", hyperparameters=hyper, output=tmp_path / "w.npy")
    plan = FitPlan(**settings, exclude_from_fit=("variable=v1_income,geographic_id=1",))
    targets = package.targets
    excluded = ((targets["variable"] == "v1_income") & (targets["geographic_id"].astype(str) == "1")).to_numpy()
    assert excluded.sum() == 1
    objective = np.asarray(fit_objective(plan, package).loss_weights)
    assert (objective[excluded] == 0).all()
    train = np.arange(package.n_targets) % 3 != 0
    selected = np.asarray(fit_objective(plan, package).select(train).loss_weights)
    assert (selected[excluded[train]] == 0).all() and (selected[~excluded[train]] > 0).all()
    reduced = np.asarray(fit_objective(FitPlan(**settings), package.select_targets(~excluded)).loss_weights)
    np.testing.assert_array_equal(objective[~excluded], reduced)
    whole = np.asarray(fit_objective(FitPlan(**settings), package).loss_weights)
    state_two = ((targets["variable"] == "v1_income") & (targets["geographic_id"].astype(str) == "2")).to_numpy()
    assert whole[state_two].tolist() == [0.5] and objective[state_two].tolist() == [1.0]


def test_fail_if_passes_fails_with_exit_3_and_keeps_the_outputs(package, package_path, tmp_path, capsys):
    output = tmp_path / "run" / "w.npy"
    args = ["fit", "--package-path", str(package_path), "--output", str(output), *FIT]
    assert main([*args, "--fail-if", "geo_level=national:1000%"]) == 0
    record, diagnostics = read_run(output.parent)
    (check,) = record["fail_if"]
    national = (package.targets["geo_level"] == "national").to_numpy()
    worst = diagnostics.loc[national, "abs_rel_error"].idxmax()
    assert check == {
        "rule": "geo_level=national:1000%",
        "tolerance": 10.0,
        "n_targets": int(national.sum()),
        "n_failed": 0,
        "worst_target": diagnostics.loc[worst, "target"],
        "worst_rel_error": pytest.approx(diagnostics.loc[worst, "rel_error"]),
        "passed": True,
    }
    capsys.readouterr()
    tight = "variable=person_count,geo_level=national:0.0001"
    assert main([*args, "--fail-if", tight, "--fail-if", "geo_level=national:10"]) == 3
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("jaxcal fit: error: --fail-if " + tight), error
    assert "geo_level=national:10:" not in error[0] and "(outputs written)" in error[0]
    assert " targets outside 0.01% (worst national/" in error[0]
    record, diagnostics = read_run(output.parent)
    assert [check["passed"] for check in record["fail_if"]] == [False, True]
    person = (package.targets["variable"] == "person_count") & (package.targets["geo_level"] == "national")
    expected_failed = int((diagnostics.loc[person.to_numpy(), "abs_rel_error"] > 1e-4).sum())
    assert record["fail_if"][0]["n_failed"] == expected_failed > 0
    assert output.is_file()


def test_tolerance_rule_syntax():
    rule = ToleranceRule.parse("variable=person_count,geo_level=national:1%")
    assert rule.rules == ({"variable": "person_count", "geo_level": "national"},) and rule.tolerance == 0.01
    assert ToleranceRule.parse("geographic_id=US:0.05").tolerance == 0.05
    for bad in ("variable=x", "variable=x:", ":1%", "variable=x:-1", "variable=x:nan", "colour=red:1%", "variable:1%"):
        with pytest.raises(ValueError, match="--fail-if"):
            ToleranceRule.parse(bad)


@pytest.mark.parametrize(
    "extra, phrase",
    [
        (["--exclude-from-fit", "variable=no_such_variable"], "matches none of the"),
        (["--exclude-from-fit", "variable"], "expected field=value"),
        (["--exclude-from-fit", "colour=red"], "expected field=value"),
        (
            [
                "--exclude-from-fit",
                "geo_level=national",
                "--exclude-from-fit",
                "geo_level=state",
                "--exclude-from-fit",
                "geo_level=district",
            ],
            "leaves none of the",
        ),
        (["--fail-if", "variable=no_such_variable:1%"], "matches none of the"),
        (["--fail-if", "geo_level=national"], "expected FIELD=VALUE"),
        (["--exclude-from-fit", "missing.yaml"], "target config not found"),
    ],
)
def test_rule_mistakes_are_one_line_before_the_fit(package_path, tmp_path, capsys, extra, phrase):
    output = tmp_path / "run" / "w.npy"
    assert main(["fit", "--package-path", str(package_path), "--output", str(output), *FIT, *extra]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("jaxcal fit: error:") and phrase in error[0], error
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_rules_from_a_yaml_file_and_a_resume_that_changes_them(package, package_path, tmp_path, capsys):
    rules = tmp_path / "excluded.yaml"
    rules.write_text("exclude:\n  - variable: v1_income\n    geo_level: national\n  - geographic_id: '1'\n")
    output = tmp_path / "run" / "w.npy"
    args = ["fit", "--package-path", str(package_path), "--output", str(output), *FIT]
    assert main([*args, "--exclude-from-fit", str(rules)]) == 0
    record, _ = read_run(output.parent)
    state_one = (package.targets["geographic_id"].astype(str) == "1").to_numpy()
    assert record["excluded_from_fit"]["n_targets"] == int((national_income(package) | state_one).sum())
    capsys.readouterr()
    resumed = tmp_path / "resumed" / "w.npy"
    again = ["fit", "--package-path", str(package_path), "--output", str(resumed), *FIT, "--resume-from", str(output)]
    assert main(again) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "resume it with the --exclude-from-fit rules it was fitted with" in error[0], error
    assert main([*again, "--exclude-from-fit", str(rules)]) == 0


def test_headline_reports_each_geography_level_and_the_impossible_targets(package, tmp_path, capsys):
    """Per level the errors of the achievable targets, as the diagnostics give them; a row zeroed out
    here is counted impossible at its level and left out of that level's errors."""
    matrix = package.matrix.tolil()
    district = int(np.flatnonzero(package.targets["geo_level"].to_numpy() == "district")[0])
    matrix[district, :] = 0
    impossible = jaxcal.io.CalibrationPackage(
        matrix=matrix.tocsr(),
        targets=package.targets,
        target_names=package.target_names,
        initial_weights=package.initial_weights,
        geography=package.geography,
        metadata=package.metadata,
    )
    path = jaxcal.io.save_package(impossible, tmp_path / "impossible.npz")
    output = tmp_path / "run" / "w.npy"
    assert main(["fit", "--package-path", str(path), "--output", str(output), *FIT[:-1]]) == 0
    printed = capsys.readouterr().out
    record, diagnostics = read_run(output.parent)
    diagnostics["geo_level"] = package.targets["geo_level"]
    assert (~diagnostics["achievable"]).sum() == 1
    expected = diagnostics[diagnostics["achievable"]].groupby("geo_level")["abs_rel_error"].median() * 100
    by_level = record["errors_by_level"]
    assert list(by_level) == ["national", "state", "district"]
    for level, errors in by_level.items():
        assert errors["n_targets"] == (diagnostics["geo_level"] == level).sum()
        assert errors["n_impossible"] == (level == "district")
        assert errors["median_error_pct"] == pytest.approx(expected[level])
    assert by_level["national"]["n_states"] == 2
    national, district_errors = by_level["national"], by_level["district"]
    assert (
        f"by level: national (the records of 2 states) {national['n_targets']:,} targets, "
        f"median {national['median_error_pct']:.2f}%; " in printed
    )
    assert f"district {district_errors['n_targets']:,} targets, median {district_errors['median_error_pct']:.2f}%" in (
        printed
    )
    assert "; impossible targets 1 (district 1; row sum not positive" in printed
