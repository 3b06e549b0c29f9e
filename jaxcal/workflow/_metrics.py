"""Error and weight-health metrics of a weight vector, in float64 on the host."""

from __future__ import annotations

from typing import Any

import numpy as np

TINY_WEIGHT = 0.01
"""A positive weight below this counts as tiny (PolicyEngine's smallest weight bucket)."""
COLLAPSE_ESS_RATIO = 0.01
"""Effective sample size below this share of the positive records suggests collapse."""


def relative_errors(estimates: Any, targets: Any) -> np.ndarray:
    """``(estimate - target) / |target|``, 0 where the target is 0 (PolicyEngine's rel_error)."""
    estimates = np.asarray(estimates, np.float64)
    targets = np.asarray(targets, np.float64)
    safe = np.where(targets != 0, np.abs(targets), 1.0)
    return np.where(targets != 0, (estimates - targets) / safe, 0.0)


def error_summary(rel_error: Any) -> dict[str, float]:
    """Mean and median absolute relative error (percent) and the share of targets within 10%."""
    abs_error = np.abs(np.asarray(rel_error, np.float64))
    if abs_error.size == 0:
        return {"mean_error_pct": float("nan"), "median_error_pct": float("nan"), "share_within_10pct": float("nan")}
    return {
        "mean_error_pct": float(100 * abs_error.mean()),
        "median_error_pct": float(100 * np.median(abs_error)),
        "share_within_10pct": float((abs_error <= 0.1).mean()),
    }


GEO_LEVELS = ("national", "state", "district")
"""PolicyEngine's geography levels, in the order reports list them (any other level follows)."""


def errors_by_level(rel_error: Any, achievable: Any, geo_level: Any) -> dict[str, dict[str, Any]]:
    """Per geography level: its targets, how many are impossible (not ``achievable``,
    PolicyEngine's test: a row sum that is not positive, e.g. an all-zero row no weights move)
    and :func:`error_summary` of the achievable ones, so that a good national fit cannot hide
    poor districts. Levels in :data:`GEO_LEVELS` order, any other after them."""
    rel_error = np.asarray(rel_error, np.float64)
    achievable = np.asarray(achievable, bool)
    geo_level = np.asarray(geo_level, object).astype(str)
    present = set(geo_level.tolist())
    levels = [level for level in GEO_LEVELS if level in present] + sorted(present - set(GEO_LEVELS))
    out = {}
    for level in levels:
        rows = geo_level == level
        out[level] = {
            "n_targets": int(rows.sum()),
            "n_impossible": int((rows & ~achievable).sum()),
            **error_summary(rel_error[rows & achievable]),
        }
    return out


def weight_health(weights: Any) -> dict[str, Any]:
    """Summary of a weight vector: how many records are kept, how the weight spreads over them.

    Quantiles are over the positive weights. The effective sample size is
    ``(sum w)^2 / sum w^2`` (Kish); ``collapse_suspected`` when it is below
    ``COLLAPSE_ESS_RATIO`` of the positive count, i.e. a handful of records carry the total.
    """
    w = np.asarray(weights, np.float64)
    finite = bool(np.isfinite(w).all())
    non_negative = bool((w >= 0).all()) if finite else False
    # Kept means > 0, as PolicyEngine's weight_nonzero counts ((weights > 0).sum()): a weight of
    # 1e-8 is kept, and tiny_share tells how many kept weights are below TINY_WEIGHT.
    positive = w[w > 0] if finite else np.zeros(0)
    n_positive = int(positive.size)
    total = float(positive.sum())
    ess = total**2 / float((positive**2).sum()) if n_positive else 0.0
    quantiles = np.quantile(positive, [0.01, 0.5, 0.99]) if n_positive else [float("nan")] * 3
    return {
        "n_records": int(w.size),
        "finite": finite,
        "non_negative": non_negative,
        "count_positive": n_positive,
        "tiny_share": float((positive < TINY_WEIGHT).mean()) if n_positive else 0.0,
        "total": total,
        "min": float(positive.min()) if n_positive else float("nan"),
        "p01": float(quantiles[0]),
        "p50": float(quantiles[1]),
        "p99": float(quantiles[2]),
        "max": float(positive.max()) if n_positive else float("nan"),
        "effective_sample_size": ess,
        "ess_ratio": ess / n_positive if n_positive else 0.0,
        "collapse_suspected": bool(n_positive == 0 or ess < COLLAPSE_ESS_RATIO * n_positive),
    }
