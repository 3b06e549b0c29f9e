"""Reading and writing: calibration packages (safe ``.npz``; PolicyEngine pickles on request,
checked against their stage-2 contract), checkpoints, target configs, atomic files and hashes.
Depends only on the core."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._checkpoint import Checkpoint as Checkpoint
    from ._checkpoint import load_checkpoint as load_checkpoint
    from ._checkpoint import save_checkpoint as save_checkpoint
    from ._checkpoint import signature_differences as signature_differences
    from ._contract import STAGE_CONTRACT_FILENAME as STAGE_CONTRACT_FILENAME
    from ._contract import check_stage_contract as check_stage_contract
    from ._contract import policyengine_state_fips as policyengine_state_fips
    from ._files import atomic_write as atomic_write
    from ._files import check_inputs_spared as check_inputs_spared
    from ._files import check_writable as check_writable
    from ._files import file_provenance as file_provenance
    from ._files import json_safe as json_safe
    from ._files import sha256_arrays as sha256_arrays
    from ._files import sha256_file as sha256_file
    from ._package import GEOGRAPHY_KEYS as GEOGRAPHY_KEYS
    from ._package import TARGET_COLUMNS as TARGET_COLUMNS
    from ._package import CalibrationPackage as CalibrationPackage
    from ._package import PackageError as PackageError
    from ._package import import_pickle_package as import_pickle_package
    from ._package import is_pickle as is_pickle
    from ._package import load_package as load_package
    from ._package import save_package as save_package
    from ._targets import POLICYENGINE_TARGET_CONFIG as POLICYENGINE_TARGET_CONFIG
    from ._targets import SELECTOR_FIELDS as SELECTOR_FIELDS
    from ._targets import apply_target_config as apply_target_config
    from ._targets import check_target_config as check_target_config
    from ._targets import load_target_config as load_target_config
    from ._targets import parse_target_rules as parse_target_rules
    from ._targets import policyengine_initial_weights as policyengine_initial_weights
    from ._targets import policyengine_target_groups as policyengine_target_groups
    from ._targets import target_config_mask as target_config_mask
    from ._targets import target_rules_mask as target_rules_mask

_EXPORTS = {
    "Checkpoint": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "save_checkpoint": "_checkpoint",
    "signature_differences": "_checkpoint",
    "STAGE_CONTRACT_FILENAME": "_contract",
    "check_stage_contract": "_contract",
    "policyengine_state_fips": "_contract",
    "atomic_write": "_files",
    "check_inputs_spared": "_files",
    "check_writable": "_files",
    "file_provenance": "_files",
    "json_safe": "_files",
    "sha256_arrays": "_files",
    "sha256_file": "_files",
    "GEOGRAPHY_KEYS": "_package",
    "TARGET_COLUMNS": "_package",
    "CalibrationPackage": "_package",
    "PackageError": "_package",
    "import_pickle_package": "_package",
    "is_pickle": "_package",
    "load_package": "_package",
    "save_package": "_package",
    "apply_target_config": "_targets",
    "check_target_config": "_targets",
    "load_target_config": "_targets",
    "POLICYENGINE_TARGET_CONFIG": "_targets",
    "policyengine_initial_weights": "_targets",
    "policyengine_target_groups": "_targets",
    "target_config_mask": "_targets",
    "SELECTOR_FIELDS": "_targets",
    "parse_target_rules": "_targets",
    "target_rules_mask": "_targets",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
