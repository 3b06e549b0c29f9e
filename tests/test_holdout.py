"""Held-out target families: the split, the curves against numpy, early stopping against a replay."""

import json

import jax
import numpy as np
import pandas as pd
import pytest
from _fitting import fit, fit_with_holdout
from _workflow_problem import small_package

import jaxcal
import jaxcal.io
from jaxcal.runs import write_holdout_log
from jaxcal.workflow import LOG_COLUMNS, holdout_split


@pytest.fixture(scope="module")
def package():
    return small_package()[0]


def _model(n, init=100.0, **kwargs):
    return jaxcal.CalibrationWeights.init(n, key=jax.random.key(1), init_weights=init, beta=0.35, **kwargs)


def _relative_loss(package, rows, weights, groups=None):
    t = package.target_values[rows]
    estimate = package.matrix.astype(np.float64)[rows] @ np.asarray(weights, np.float64)
    g = np.ones(rows.sum()) if groups is None else 1 / np.bincount(groups[rows])[groups[rows]]
    return np.sum(g * ((t - estimate) / (t + 1)) ** 2)


def test_split_holds_out_whole_families_in_every_stratum(package):
    split = holdout_split(package.targets, fraction=0.25, seed=4)
    targets = package.targets
    family = targets["geo_level"] + "/" + targets["variable"] + "/"
    for name, rows in family.groupby(family).groups.items():
        held = split.holdout[rows]
        assert held.all() or not held.any(), name
    assert sorted(set(family[split.holdout])) == sorted(split.held_out_families)
    measure = np.where(targets["variable"].str.endswith("_count"), "count", "amount")
    strata = pd.DataFrame({"family": family, "stratum": targets["geo_level"] + measure, "held": split.holdout})
    per_stratum = strata.drop_duplicates("family").groupby("stratum")["held"].agg(["size", "sum"])
    # national: 10 count and 10 amount families; state: 4 + 4; district: 3 + 3
    expected = {n: min(n - 1, max(1, round(0.25 * n))) for n in per_stratum["size"]}
    assert per_stratum["size"].tolist() == [3, 3, 10, 10, 4, 4]
    assert per_stratum["sum"].tolist() == [expected[n] for n in per_stratum["size"]]
    assert split.train.sum() + split.holdout.sum() == package.n_targets


def test_split_is_seeded_and_takes_a_named_family_column(package):
    a, b, c = (holdout_split(package.targets, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.holdout, b.holdout) and a.held_out_families == b.held_out_families
    assert not np.array_equal(a.holdout, c.holdout)
    targets = package.targets.assign(block=np.arange(package.n_targets) // 10)
    named = holdout_split(targets, family_columns=["block"], fraction=0.3)  # one stratum
    assert len(named.family_names) == 9 and len(named.held_out_families) == 3  # round(0.3 * 9)
    assert set(np.flatnonzero(named.holdout) // 10) == {int(f) for f in named.held_out_families}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fraction=1.0), "fraction"),
        (dict(family_columns=["nope"]), "nope"),
        (dict(strata=np.arange(84)), "spans strata"),
        (dict(strata=np.zeros(3)), "one label per target"),
    ],
)
def test_split_rejects(package, kwargs, match):
    with pytest.raises(ValueError, match=match):
        holdout_split(package.targets, **kwargs)


def test_fit_sees_train_targets_only_and_logs_numpy_losses(package):
    """The fit is a plain fit on the train targets; every logged loss equals numpy's."""
    split = holdout_split(package.targets, seed=1)
    groups = np.arange(package.n_targets) % 5
    settings = dict(key=jax.random.key(3), epochs=12, lambda_l0=1e-4, log_weight_jitter_sd=0.05)
    watched = fit_with_holdout(
        _model(package.n_records), package, split, eval_every=4, target_groups=groups, **settings
    )
    train = package.select_targets(split.train)
    weights, objective = {}, {}

    def keep(result):
        weights[result.epochs] = np.asarray(result.weights, np.float64)
        objective[result.epochs] = float(result.history.total[-1])

    fit(
        _model(package.n_records),
        train.target_matrix(),
        train.target_values,
        target_groups=groups[split.train],
        chunk_epochs=4,
        callback=keep,
        **settings,
    )
    assert watched.log.columns.tolist() == list(LOG_COLUMNS) and watched.log["epoch"].tolist() == [4, 8, 12]
    everything = np.ones(package.n_targets, bool)
    for row in watched.log.itertuples():
        w = weights[row.epoch]
        np.testing.assert_allclose(row.train_loss, _relative_loss(package, split.train, w, groups), rtol=1e-5)
        np.testing.assert_allclose(row.holdout_loss, _relative_loss(package, split.holdout, w, groups), rtol=1e-5)
        np.testing.assert_allclose(row.full_loss, _relative_loss(package, everything, w, groups), rtol=1e-5)
        np.testing.assert_allclose(row.weight_sum, w.sum(), rtol=1e-5)
        assert row.positive_record_count == (w > 0).sum()
        assert row.objective_train_loss == objective[row.epoch]
    assert watched.log["positive_record_count"].iloc[-1] < package.n_records
    assert watched.best_epoch == watched.log["epoch"][watched.log["holdout_loss"].idxmin()]
    np.testing.assert_array_equal(watched.weights, weights[watched.best_epoch])


def _overfitting_package(package, split):
    """Held-out targets at 0.45 of what the train targets imply: from weights starting at 30
    (truth is about 100), the held-out loss falls, then rises as the fit approaches the truth."""
    values = np.where(split.holdout, 0.45 * package.target_values, package.target_values)
    return eqx_replace_values(package, values)


def eqx_replace_values(package, values):
    return jaxcal.io.CalibrationPackage.create(
        package.matrix,
        package.targets.assign(value=values),
        package.target_names,
        geography=package.geography,
    )


def test_early_stopping_picks_the_epoch_a_replay_computes(package):
    split = holdout_split(package.targets, seed=2)
    package = _overfitting_package(package, split)
    settings = dict(key=jax.random.key(0), lambda_l0=0.0, learning_rate=0.05)
    patience, min_delta, epochs = 5, 1e-4, 30

    # Replay: every epoch's weights from a plain fit, the held-out loss in numpy, the rule by hand.
    weights = {}
    train = package.select_targets(split.train)
    fit(
        _model(package.n_records, 30.0, use_gates=False),
        train.target_matrix(),
        train.target_values,
        epochs=epochs,
        chunk_epochs=1,
        callback=lambda r: weights.update({r.epochs: np.asarray(r.weights)}),
        **settings,
    )
    best, best_epoch, stop = np.inf, None, epochs
    for epoch in range(1, epochs + 1):
        loss = _relative_loss(package, split.holdout, weights[epoch])
        if loss < best - min_delta:
            best, best_epoch = loss, epoch
        if epoch - best_epoch >= patience:
            stop = epoch
            break
    assert 5 < best_epoch < stop < epochs  # the held-out curve really turns

    watched = fit_with_holdout(
        _model(package.n_records, 30.0, use_gates=False),
        package,
        split,
        epochs=epochs,
        patience=patience,
        min_delta=min_delta,
        **settings,
    )
    assert (watched.best_epoch, watched.stopped_epoch, watched.stop_reason) == (best_epoch, stop, "early_stopping")
    np.testing.assert_array_equal(watched.weights, weights[best_epoch])
    assert watched.result.epochs == best_epoch and watched.log["epoch"].iloc[-1] == stop
    assert watched.summary()["holdout_loss"] == pytest.approx(best, rel=1e-5)

    unlimited = fit_with_holdout(
        _model(package.n_records, 30.0, use_gates=False), package, split, epochs=epochs, **settings
    )
    assert unlimited.stop_reason == "epochs_exhausted" and unlimited.stopped_epoch == epochs
    assert unlimited.best_epoch == best_epoch  # min_delta 1e-4 is far below the curve's slope here


def test_log_files_and_callback_stop(package, tmp_path):
    split = holdout_split(package.targets, seed=0)
    seen = []
    watched = fit_with_holdout(
        _model(package.n_records),
        package,
        split,
        key=jax.random.key(0),
        epochs=30,
        eval_every=2,
        lambda_l0=0.0,
        callback=lambda result, row: seen.append((result.epochs, row["epoch"])) or row["epoch"] >= 6,
    )
    assert seen == [(2, 2), (4, 4), (6, 6)] and watched.stop_reason == "callback" and watched.stopped_epoch == 6
    paths = write_holdout_log(watched, tmp_path)
    record = json.loads(open(paths["json"]).read())
    assert record["summary"]["stop_reason"] == "callback" and [r["epoch"] for r in record["log"]] == [2, 4, 6]
    assert record["summary"]["held_out_families"] == list(split.held_out_families)
    assert pd.read_csv(paths["csv"])["holdout_loss"].tolist() == pytest.approx(watched.log["holdout_loss"].tolist())
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holdout_log.csv", "holdout_log.json", "holdout_log.png"]
