"""Diagnostics: PolicyEngine's per-target table and its package validation report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import equinox as eqx
import numpy as np

from ..workflow._metrics import relative_errors

if TYPE_CHECKING:
    import pandas as pd

    from ..io import CalibrationPackage


def target_diagnostics(package: CalibrationPackage, weights: Any) -> pd.DataFrame:
    """PolicyEngine's ``unified_diagnostics.csv`` table, computed in float64:
    ``target, true_value, estimate, rel_error, abs_rel_error, achievable``."""
    import pandas as pd

    weights = np.asarray(weights, np.float64)
    estimates = package.estimate(weights)
    rel_error = relative_errors(estimates, package.target_values)
    return pd.DataFrame(
        {
            "target": package.target_names,
            "true_value": package.target_values,
            "estimate": estimates,
            "rel_error": rel_error,
            "abs_rel_error": np.abs(rel_error),
            "achievable": package.row_sums() > 0,
        }
    )


class PackageValidation(eqx.Module):
    """policyengine-us-data's ``validate_package`` result: achievability of each target."""

    n_targets: int
    n_records: int
    nnz: int
    density: float
    metadata: dict
    n_achievable: int
    impossible_targets: pd.DataFrame
    """Targets whose row sums to 0 (no weights can reach them)."""
    impossible_by_group: pd.DataFrame
    hardest_targets: pd.DataFrame
    """Achievable targets with the lowest ``row_sum / target`` (the weight each record needs)."""
    group_summary: pd.DataFrame
    strict_ratio: float | None
    strict_failures: int

    @property
    def n_impossible(self) -> int:
        return self.n_targets - self.n_achievable

    @property
    def exit_code(self) -> int:
        """0 pass, 1 impossible targets, 2 strict failures (PolicyEngine's codes)."""
        if self.strict_failures:
            return 2
        return 1 if self.n_impossible else 0


def validate_package(
    package: CalibrationPackage, *, n_hardest: int = 10, strict_ratio: float | None = None
) -> PackageValidation:
    """Which targets can be reached at all, and which are hardest, as policyengine-us-data reports."""
    import pandas as pd

    targets = _with_text_domain(package.targets)
    names = np.asarray(package.target_names, dtype=object)
    row_sums = package.row_sums()
    values = package.target_values
    achievable = row_sums > 0
    impossible = targets.loc[~achievable]
    group = ["domain_variable", "variable", "geo_level"]

    achievable_idx = np.flatnonzero(achievable)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(values[achievable_idx] != 0, row_sums[achievable_idx] / values[achievable_idx], np.inf)
    hardest = achievable_idx[np.argsort(ratios, kind="stable")[: max(n_hardest, 0)]]
    hardest_ratio = np.sort(ratios, kind="stable")[: max(n_hardest, 0)]
    summary = (
        targets.assign(achievable=achievable)
        .groupby(group, dropna=False)
        .agg(total=("value", "size"), ok=("achievable", "sum"))
        .reset_index()
        .sort_values(group)
        .reset_index(drop=True)
    )
    summary["ok"] = summary["ok"].astype(int)
    summary["impossible"] = summary["total"] - summary["ok"]
    n_cells = package.n_targets * package.n_records
    return PackageValidation(
        n_targets=package.n_targets,
        n_records=package.n_records,
        nnz=package.nnz,
        density=package.nnz / n_cells if n_cells else 0.0,
        metadata=dict(package.metadata),
        n_achievable=int(achievable.sum()),
        impossible_targets=pd.DataFrame(
            {
                "target_name": names[~achievable],
                "domain_variable": impossible["domain_variable"].to_numpy(),
                "variable": impossible["variable"].to_numpy(),
                "geo_level": impossible["geo_level"].to_numpy(),
                "geographic_id": impossible["geographic_id"].to_numpy(),
                "target_value": values[~achievable],
            }
        ),
        impossible_by_group=(
            impossible.groupby(group, dropna=False)
            .size()
            .rename("count")
            .reset_index()
            .sort_values("count", ascending=False, kind="stable")
            .reset_index(drop=True)
        ),
        hardest_targets=pd.DataFrame(
            {
                "target_name": names[hardest],
                "domain_variable": targets["domain_variable"].to_numpy()[hardest],
                "variable": targets["variable"].to_numpy()[hardest],
                "geographic_id": targets["geographic_id"].to_numpy()[hardest],
                "ratio": hardest_ratio,
                "row_sum": row_sums[hardest],
                "target_value": values[hardest],
            }
        ),
        group_summary=summary,
        strict_ratio=strict_ratio,
        strict_failures=int((ratios < strict_ratio).sum()) if strict_ratio is not None else 0,
    )


def format_validation(result: PackageValidation, package_path: str | None = None) -> str:
    """The report ``jaxcal validate`` prints: policyengine-us-data's ``format_report``, its header
    line for line (jaxcal's own metadata keys standing in where PolicyEngine's are absent)."""
    lines = ["", "=== Calibration Package Validation ===", ""]
    if package_path:
        lines.append(f"Package: {package_path}")
    lines += _policyengine_provenance(result.metadata) + [""]
    lines.append(f"Matrix:  {result.n_targets:,} targets x {result.n_records:,} columns")
    lines.append(f"Non-zero: {result.nnz:,} (density: {result.density:.6f})")
    meta = result.metadata
    if meta.get("n_clones"):
        parts = [f"Clones: {meta['n_clones']}"]
        records = meta.get("n_records") or meta.get("n_base_records")
        if records:
            parts.append(f"Records: {records:,}")
        if meta.get("seed") is not None:
            parts.append(f"Seed: {meta['seed']}")
        lines.append(", ".join(parts))
    pct = 100 * result.n_achievable / result.n_targets if result.n_targets else 0.0
    lines += [
        "",
        "--- Achievability ---",
        f"Achievable: {result.n_achievable:>6,} / {result.n_targets:,} ({pct:.1f}%)",
        f"Impossible: {result.n_impossible:>6,} / {result.n_targets:,} ({100 - pct:.1f}%)",
        "",
    ]
    if len(result.impossible_targets):
        lines.append("--- Impossible Targets ---")
        for row in result.impossible_targets.to_dict("records"):
            lines.append(f"  {row['target_name']:<60s} {row['target_value']:>14,.0f}")
        lines.append("")
    if len(result.impossible_by_group) > 1:
        lines.append("--- Impossible Targets by Group ---")
        for row in result.impossible_by_group.to_dict("records"):
            lines.append(
                f"  {row['domain_variable']:<20s} {row['variable']:<25s} {row['geo_level']:<12s} {row['count']:>5d}"
            )
        lines.append("")
    if len(result.hardest_targets):
        lines.append(f"--- Hardest Achievable Targets ({len(result.hardest_targets)} lowest ratio) ---")
        # PolicyEngine prints the ratio as {:.4f}, which shows the usual 1e-5 of a national total as 0.0000.
        lines.append(f"  {'target (row_sum / target = ratio)':<50s} {'ratio':>10s} {'row_sum':>14s} {'target':>14s}")
        for row in result.hardest_targets.to_dict("records"):
            lines.append(
                f"  {row['target_name']:<50s} {row['ratio']:>10.3g} {row['row_sum']:>14,.0f} {row['target_value']:>14,.0f}"
            )
        lines.append("")
    if len(result.group_summary):
        lines.append("--- Group Summary ---")
        lines.append(
            f"  {'domain':<20s} {'variable':<25s} {'geo_level':<12s} {'total':>6s} {'ok':>6s} {'impossible':>10s}"
        )
        for row in result.group_summary.to_dict("records"):
            lines.append(
                f"  {row['domain_variable']:<20s} {row['variable']:<25s} {row['geo_level']:<12s}"
                f" {row['total']:>6d} {row['ok']:>6d} {row['impossible']:>10d}"
            )
        lines.append("")
    if result.strict_ratio is not None:
        lines += [f"Strict check (ratio < {result.strict_ratio}): {result.strict_failures} failures", ""]
    if result.strict_failures:
        lines.append(f"RESULT: FAIL ({result.strict_failures} targets below ratio {result.strict_ratio})")
    elif result.n_impossible:
        lines.append(f"RESULT: FAIL ({result.n_impossible} impossible targets)")
    else:
        lines.append("RESULT: PASS")
    return "\n".join(lines)


def provenance_lines(metadata: dict) -> list[str]:
    """Where a package came from, one fact a line: PolicyEngine's header lines, then the inputs'
    paths, the import and the stage-2 contract it was checked against."""
    labels = (
        ("db_path", "Database"),
        ("target_config_path", "Target config"),
        ("target_config_sha256", "Target config SHA"),
        ("imported_from", "Imported from"),
    )
    lines = _policyengine_provenance(metadata)
    for key, label in labels:
        value = metadata.get(key)
        if value:
            lines.append(f"{label}: {str(value)[:12] if key.endswith('sha256') else value}")
    contract = metadata.get("stage_contract")
    if contract:
        lines.append(f"Stage contract: {contract.get('file')} (fingerprint {str(contract.get('fingerprint'))[:19]})")
    return lines


def _policyengine_provenance(metadata: dict) -> list[str]:
    """``format_report``'s provenance lines, in its order and wording; a jaxcal package's
    ``jaxcal_version`` stands in for PolicyEngine's ``package_version``."""
    lines = []
    if metadata.get("created_at"):
        lines.append(f"Created: {metadata['created_at']}")
    if metadata.get("dataset_path"):
        lines.append(f"Dataset: {metadata['dataset_path']}")
    if metadata.get("git_branch") or metadata.get("git_commit"):
        commit = metadata.get("git_commit") or ""
        dirty = " (DIRTY)" if metadata.get("git_dirty") else ""
        lines.append(f"Git: {metadata.get('git_branch', 'unknown')} @ {commit[:8] or 'unknown'}{dirty}")
    if metadata.get("package_version"):
        lines.append(f"Version: {metadata['package_version']}")
    elif metadata.get("jaxcal_version"):
        lines.append(f"Version: jaxcal {metadata['jaxcal_version']}")
    for key, label in (("dataset_sha256", "Dataset SHA"), ("db_sha256", "DB SHA")):
        if metadata.get(key):
            lines.append(f"{label}: {metadata[key][:12]}")
    return lines


def _with_text_domain(targets: pd.DataFrame) -> pd.DataFrame:
    """Targets with text group columns: a missing domain reads as '' so that it groups and prints."""
    return targets.assign(
        domain_variable=targets["domain_variable"].fillna("").astype(str),
        variable=targets["variable"].astype(str),
        geo_level=targets["geo_level"].astype(str),
    )
