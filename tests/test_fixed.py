"""Fixed records: residual targets by hand, clamps reported, the fixed weights put back."""

import jax
import numpy as np
import pandas as pd
import pytest
from _fitting import fit
from _workflow_problem import small_package
from scipy import sparse

import jaxcal
import jaxcal.io
from jaxcal.workflow import residualize


def _tiny():
    matrix = sparse.csr_array(np.array([[1.0, 2, 0, 1], [0, 1, 1, 0], [3, 0, 0, 2]]))
    targets = pd.DataFrame(
        {
            "variable": ["a", "b", "c"],
            "geo_level": "national",
            "geographic_id": "US",
            "domain_variable": None,
            "value": [10.0, 5.0, 4.0],
        }
    )
    return jaxcal.io.CalibrationPackage.create(matrix, targets, ["a", "b", "c"])


def test_residuals_and_clamps_by_hand():
    # Fixed columns 3 and 1 with weights 3 and 2: contributions 2*2 + 1*3 = 7, 1*2 = 2, 2*3 = 6.
    result = residualize(_tiny(), [3, 1], [3.0, 2.0])
    report = result.report
    assert report["fixed_contribution"].tolist() == [7.0, 2.0, 6.0]
    assert report["residual"].tolist() == [3.0, 3.0, 0.0]  # 4 - 6 clamps at 0
    assert report["clamped"].tolist() == [False, False, True] and result.clamped["target"].tolist() == ["c"]
    assert result.package.target_values.tolist() == [3.0, 3.0, 0.0]
    assert result.package.matrix.toarray().tolist() == [[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]]  # columns 0 and 2
    assert result.package.metadata["clamped_targets"] == 1
    assert result.combine([5.0, 6.0]).tolist() == [5.0, 2.0, 6.0, 3.0]
    with pytest.raises(ValueError, match="expected 2 free weights"):
        result.combine([1.0])


def test_non_additive_targets_keep_their_value(tmp_path):
    result = residualize(_tiny(), [1, 3], [2.0, 3.0], additive=np.array([True, False, True]))
    assert result.report["residual"].tolist() == [3.0, 5.0, 0.0]
    assert result.report["clamped"].tolist() == [False, False, True]
    result.write_report(tmp_path / "fixed.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fixed.csv"), result.report)


@pytest.mark.parametrize(
    "columns, weights, match",
    [
        ([4], [1.0], r"lie in \[0, 4\)"),
        ([1, 1], [1.0, 1.0], "repeat"),
        ([1], [-1.0], "non-negative"),
        ([1, 2], [1.0], "2 finite"),
    ],
)
def test_residualize_rejects(columns, weights, match):
    with pytest.raises(ValueError, match=match):
        residualize(_tiny(), columns, weights)


def test_fit_around_a_spine_reproduces_the_original_targets():
    """The combined weights keep the spine's weights and add its contribution back exactly."""
    package, problem = small_package()
    spine = np.argsort(-np.asarray(package.matrix.sum(axis=0)).ravel())[
        :10
    ]  # the records with most weight in the matrix
    result = residualize(package, spine, problem.true_weights[spine])
    assert not result.report["clamped"].any()
    free = result.package
    model = jaxcal.CalibrationWeights.init(free.n_records, key=jax.random.key(0), init_weights=100.0, use_gates=False)
    fitted = fit(model, free.target_matrix(), free.target_values, key=jax.random.key(1), epochs=40, lambda_l0=0.0)
    weights = result.combine(fitted.weights)
    np.testing.assert_array_equal(weights[spine], problem.true_weights[spine].astype(np.float64))
    X = package.matrix.astype(np.float64)
    np.testing.assert_allclose(
        X @ weights,
        X[:, result.free_columns] @ np.asarray(fitted.weights, np.float64)
        + result.report["fixed_contribution"].to_numpy(),
        rtol=1e-12,
    )
