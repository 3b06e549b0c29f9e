"""PolicyEngine's stage-2 package as jaxcal imports it: each column's state from its geography,
and the contract (``calibration_package_contract.json``) that stage 2 writes beside the pickle.

The contract records the pickle's sha256 and size, a summary of its payload (matrix shape and
nonzeros, counts, provenance) and hashes of its geography; :func:`check_stage_contract` makes
policyengine-us-data's ``validate_calibration_package_contract`` checks with jaxcal's own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._files import sha256_file
from ._package import PackageError

STAGE_CONTRACT_FILENAME = "calibration_package_contract.json"
_STAGE_ID = "2_build_calibration_package"
_CONTRACT_TYPE = "calibration_package"
_SCHEMA_VERSION = "1"
_TEXT_FACTS = (
    "dataset_sha256",
    "db_sha256",
    "target_config_path",
    "target_config_sha256",
    "package_scope",
    "matrix_builder",
    "chunk_dir",
)
_INTEGER_FACTS = ("n_clones", "seed", "base_n_records", "chunk_size")
"""Package metadata the contract's summary repeats (as text, as integers)."""
_ABSENT = object()


def policyengine_state_fips(block_geoid: Any = None, cd_geoid: Any = None) -> np.ndarray | None:
    """Each column's state FIPS (int32) from PolicyEngine's geography, None without any.

    From the first two digits of the 15-digit census block GEOID (what stage 2 writes into
    ``geography_assignment.npz``), else from the district GEOID (state FIPS * 100 + district,
    ``"601"`` or ``601``). :class:`PackageError` for a malformed GEOID or when blocks and
    districts place a column in different states.
    """
    from_blocks = None if block_geoid is None else _block_states(np.asarray(block_geoid))
    from_districts = None if cd_geoid is None else _district_states(np.asarray(cd_geoid))
    if from_blocks is None or from_districts is None:
        return from_blocks if from_districts is None else from_districts
    if from_blocks.shape != from_districts.shape:
        raise PackageError(f"block_geoid has {from_blocks.size} entries but cd_geoid {from_districts.size}")
    differ = np.flatnonzero(from_blocks != from_districts)
    if differ.size:
        i = differ[0]
        raise PackageError(
            f"block_geoid and cd_geoid place {differ.size} column(s) in different states, first column {i}: "
            f"block {np.asarray(block_geoid)[i]} in state {from_blocks[i]}, "
            f"district {np.asarray(cd_geoid)[i]} in state {from_districts[i]}"
        )
    return from_blocks


def check_stage_contract(package_path: str | os.PathLike, payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The key facts of the stage-2 contract beside ``package_path``, checked against that file
    and its unpickled ``payload``; None when there is no contract.

    As policyengine-us-data validates it: the contract's stage and type, the package file's
    sha256 and size, and every entry of its package and geography summaries. Raises
    :class:`PackageError` naming each difference, on one line.
    """
    path = pathlib.Path(package_path)
    contract_path = path.with_name(STAGE_CONTRACT_FILENAME)
    if not contract_path.is_file():
        return None
    try:
        contract = json.loads(contract_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"{contract_path} is not readable JSON ({type(error).__name__}: {error})") from None
    if not isinstance(contract, dict):
        raise PackageError(f"{contract_path} is not a contract (a JSON object)")
    kind = (contract.get("stage_id"), contract.get("contract_type"), contract.get("schema_version", _SCHEMA_VERSION))
    if kind != (_STAGE_ID, _CONTRACT_TYPE, _SCHEMA_VERSION):
        raise PackageError(
            f"{contract_path} is not a stage-2 calibration-package contract of schema {_SCHEMA_VERSION} "
            f"(stage_id {kind[0]!r}, contract_type {kind[1]!r}, schema_version {kind[2]!r})"
        )
    outputs = [a for a in contract.get("outputs") or () if _mapping(a).get("logical_name") == "calibration_package"]
    if len(outputs) != 1:
        raise PackageError(f"{contract_path} names {len(outputs)} calibration_package outputs, not one")
    output = outputs[0]
    recorded = _mapping(contract.get("metadata"))
    geography = _geography_summary(payload)
    differences = [
        *_differences("package", output, {"sha256": f"sha256:{sha256_file(path)}", "size_bytes": path.stat().st_size}),
        *_differences("package_summary", recorded.get("package_summary"), _package_summary(payload)),
        *_differences("geography_assignment", recorded.get("geography_assignment"), geography),
    ]
    if differences:
        raise PackageError(f"{contract_path.name} does not describe this package: {'; '.join(differences)}")
    fingerprint = _mapping(contract.get("fingerprint"))
    return {
        "file": str(contract_path),
        "sha256": sha256_file(contract_path),
        "stage_id": _STAGE_ID,
        "run_id": contract.get("run_id"),
        "created_at": contract.get("created_at"),
        "code_sha": contract.get("code_sha"),
        "package_version": contract.get("package_version"),
        "fingerprint": fingerprint.get("value"),
        "package_sha256": output["sha256"],
        "package_size_bytes": output["size_bytes"],
        "inputs": {_mapping(a).get("logical_name"): _mapping(a).get("sha256") for a in contract.get("inputs") or ()},
        "canonical_geography_sha256": geography["canonical_geography_sha256"],
    }


def _block_states(blocks: np.ndarray) -> np.ndarray:
    text = blocks.astype(str)
    malformed = ~(np.char.isdigit(text) & (np.char.str_len(text) == 15))
    if malformed.any():
        raise PackageError(f"block_geoid must hold 15-digit census block GEOIDs, got {str(text[malformed][0])!r}")
    return text.astype("U2").astype(np.int32)


def _district_states(districts: np.ndarray) -> np.ndarray:
    text = districts.astype(str)
    length = np.char.str_len(text)
    malformed = ~(np.char.isdigit(text) & (length >= 3) & (length <= 4))
    if malformed.any():
        raise PackageError(
            f"cd_geoid must hold district GEOIDs (state FIPS * 100 + district), got {str(text[malformed][0])!r}"
        )
    return (text.astype(np.int64) // 100).astype(np.int32)


def _package_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the contract's ``package_summary`` records about a payload."""
    matrix = payload["X_sparse"]
    rows, columns = (int(n) for n in matrix.shape)
    nnz = int(matrix.nnz)
    metadata = _mapping(payload.get("metadata"))
    names, blocks, districts = (payload.get(k) for k in ("target_names", "block_geoid", "cd_geoid"))
    return {
        "matrix_shape": [rows, columns],
        "matrix_nnz": nnz,
        "matrix_density": nnz / (rows * columns) if rows * columns else 0.0,
        "n_targets": len(payload["targets_df"]),
        "n_columns": columns,
        "target_name_count": None if names is None else len(names),
        **{key: _text(metadata.get(key)) for key in _TEXT_FACTS},
        **{key: _integer(metadata.get(key)) for key in _INTEGER_FACTS},
        "has_initial_weights": payload.get("initial_weights") is not None,
        "has_cd_geoid": districts is not None,
        "has_block_geoid": blocks is not None,
        "cd_geoid_length": None if districts is None else len(districts),
        "block_geoid_length": None if blocks is None else len(blocks),
    }


def _geography_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the contract's ``geography_assignment`` records: lengths and hashes of the blocks and
    districts, and the hash of the whole assignment (blocks, districts, counties, states, shape)."""
    metadata = _mapping(payload.get("metadata"))
    n_records, n_clones = _integer(metadata.get("base_n_records")), _integer(metadata.get("n_clones"))
    blocks, districts = payload.get("block_geoid"), payload.get("cd_geoid")
    summary: dict[str, Any] = {
        "source_kind": "unavailable",
        "n_records": n_records,
        "n_clones": n_clones,
        "n_rows": None,
        "has_block_geoid": blocks is not None,
        "has_cd_geoid": districts is not None,
        "block_geoid_length": None,
        "cd_geoid_length": None,
        "block_geoid_sha256": None,
        "cd_geoid_sha256": None,
        "canonical_geography_sha256": None,
    }
    if blocks is None or districts is None:
        return summary
    blocks, districts = np.asarray(blocks, dtype=str), np.asarray(districts, dtype=str)
    whole = None
    if (n_records or 0) > 0 and (n_clones or 0) > 0:
        digest = hashlib.sha256(b"policyengine-us-data:geography-assignment:v1")
        for values in (blocks, districts, blocks.astype("U5")):
            digest.update(_strings_sha256(values).encode())
        digest.update(b"state_fips" + np.ascontiguousarray(_block_states(blocks), np.int32).tobytes())
        digest.update(f"{n_records}\0{n_clones}".encode())
        whole = f"sha256:{digest.hexdigest()}"
    return summary | {
        "source_kind": "calibration_package",
        "n_rows": len(blocks),
        "block_geoid_length": len(blocks),
        "cd_geoid_length": len(districts),
        "block_geoid_sha256": _strings_sha256(blocks),
        "cd_geoid_sha256": _strings_sha256(districts),
        "canonical_geography_sha256": whole,
    }


def _strings_sha256(values: np.ndarray) -> str:
    """PolicyEngine's hash of a string array: its length, then each value's length and UTF-8 bytes."""
    digest = hashlib.sha256(b"policyengine-us-data:string-array:v1")
    digest.update(len(values).to_bytes(8, "big"))
    for value in values:
        encoded = str(value).encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return f"sha256:{digest.hexdigest()}"


def _differences(section: str, recorded: Any, actual: Mapping[str, Any]) -> list[str]:
    """``section.key: contract X, package Y`` for each entry of ``actual`` that ``recorded`` lacks or differs on."""
    if not isinstance(recorded, Mapping):
        return [f"{section}: missing from the contract"]
    actual = json.loads(json.dumps(actual))  # tuples as lists, as the contract's JSON has them
    return [
        f"{section}.{key}: contract {_show(recorded.get(key, _ABSENT))}, package {_show(value)}"
        for key, value in actual.items()
        if recorded.get(key, _ABSENT) != value
    ]


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _integer(value: Any) -> int | None:
    return None if value is None else int(value)
