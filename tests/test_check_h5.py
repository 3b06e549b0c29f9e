"""`jaxcal check-h5`: passes a generated dataset, names each corruption of it."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from builders.demo_cli import register_demo_commands
from builders.demo_microdata import generate_households, write_h5
from builders.h5_check import check_h5
from jaxcal.cli import CommandError


@pytest.fixture(scope="module")
def arrays():
    return generate_households(30, seed=5, states=[6, 11])


def _raw(path, data):
    with h5py.File(path, "w") as h5:
        for key, value in data.items():
            h5[f"{key}/2024"] = value
    return path


def _run(*argv):
    parser = argparse.ArgumentParser(prog="jaxcal")
    register_demo_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check-h5", *map(str, argv)])
    return args.run(args)


def test_generated_file_passes(tmp_path, arrays, capsys):
    path = write_h5(arrays, tmp_path / "ok.h5")
    assert check_h5(path) == []
    assert _run(path) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_flat_array_layout_is_read(tmp_path, arrays):
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            h5[key] = value
    assert check_h5(path) == []


def _corrupt(arrays, name, edit):
    values = arrays[name].copy()
    edit(values)
    return {name: values}


CORRUPTIONS = {
    "duplicate household id": (
        lambda a: _corrupt(a, "household_id", lambda v: v.__setitem__(1, v[0])),
        lambda a: [
            "household_id has 1 duplicate id(s)",
            f"person_household_id: {(a['person_household_id'] == 1).sum()} person(s) point at no household "
            "(e.g. household_id 1)",
        ],
    ),
    "dangling tax unit link": (
        lambda a: _corrupt(a, "person_tax_unit_id", lambda v: v.__setitem__(0, 10_000)),
        lambda a: ["person_tax_unit_id: 1 person(s) point at no tax_unit (e.g. tax_unit_id 10000)"],
    ),
    "negative weight": (
        lambda a: _corrupt(a, "household_weight", lambda v: v.__setitem__(slice(0, 2), -1.0)),
        lambda a: ["household_weight (2024): 2 negative weight(s)"],
    ),
    "infinite weight": (
        lambda a: _corrupt(a, "household_weight", lambda v: v.__setitem__(3, np.inf)),
        lambda a: ["household_weight (2024): 1 NaN or infinite value(s)"],
    ),
    "NaN income": (
        lambda a: _corrupt(a, "employment_income", lambda v: v.__setitem__(slice(0, 3), np.nan)),
        lambda a: ["employment_income (2024): 3 NaN or infinite value(s)"],
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_named(tmp_path, arrays, capsys, name):
    make, expect = CORRUPTIONS[name]
    expected = expect(arrays)
    path = _raw(tmp_path / "bad.h5", dict(arrays) | make(arrays))
    assert check_h5(path) == expected
    with pytest.raises(CommandError) as error:
        _run(path)
    assert error.value.code == 1
    out = capsys.readouterr().out
    assert f"FAILED, {len(expected)} problem(s)" in out and all(f"  - {e}" in out for e in expected)


def test_empty_group(tmp_path, arrays):
    bad = dict(arrays) | {"marital_unit_id": np.append(arrays["marital_unit_id"], 999)}
    failures = check_h5(_raw(tmp_path / "bad.h5", bad))
    assert "marital_unit_id: 1 marital_unit(s) have no members (e.g. id 999)" in failures


def test_wrong_lengths(tmp_path, arrays):
    n_persons, n_households = arrays["person_id"].size, arrays["household_id"].size
    bad = dict(arrays)
    bad["person_spm_unit_id"] = arrays["person_spm_unit_id"][:-1]
    bad["age"] = arrays["age"][:-1]  # matches no entity
    bad["state_fips"] = arrays["state_fips"][:-1]
    failures = check_h5(_raw(tmp_path / "bad.h5", bad), {"state_fips": "household"})
    assert f"person_spm_unit_id has {n_persons - 1} entries but there are {n_persons} persons" in failures
    assert any(f.startswith(f"age (2024): has {n_persons - 1} entries, matching no entity's count") for f in failures)
    assert (
        f"state_fips (2024): has {n_households - 1} entries but there are {n_households} household records" in failures
    )


def test_missing_arrays(tmp_path, arrays):
    bad = {k: v for k, v in arrays.items() if k not in ("family_id", "person_marital_unit_id", "household_weight")}
    failures = check_h5(_raw(tmp_path / "bad.h5", bad))
    assert failures == [
        "family_id is missing",
        "person_marital_unit_id is missing",
        "household_weight is missing: the records have no weights",
    ]


def test_non_integer_ids(tmp_path, arrays):
    bad = dict(arrays) | {"tax_unit_id": arrays["tax_unit_id"] + 0.5}
    failures = check_h5(_raw(tmp_path / "bad.h5", bad))
    assert failures[0].startswith("tax_unit_id must be a one-dimensional integer array")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not hdf5")
    (failure,) = check_h5(path)
    assert failure.startswith(f"{path} is not an HDF5 file")
