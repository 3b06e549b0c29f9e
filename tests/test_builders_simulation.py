"""The simulation stage and assembly through it, on a fake model written here (no policyengine_us):
per-state and per-clone runs against values computed by hand, the matrix they assemble into,
the adapter over a stand-in for policyengine-core, and that only the adapter reaches the model."""

import ast
import pathlib
import pkgutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import builders
from builders.assembly import assemble_matrix, to_bcoo
from builders.dataset import EntityStructure
from builders.geography import GeographyAssignment
from builders.runs import RunExecutor
from builders.simulation import compute_clone_values, compute_state_values, known_entities
from builders.takeup import TAKEUP_BY_VARIABLE, seeded_rng
from builders.target_db import Constraint
from builders.target_rows import plan_target_rows

YEAR = 2024
# hh0 (id 142): persons 0 (30) and 1 (5), tax unit 0, SPM unit 0. hh1 (id 114): person 2 (70), tax unit 1, SPM unit 1.
STRUCTURE = EntityStructure(
    household_ids=np.array([142, 114]),
    person_household=np.array([0, 0, 1]),
    person_entity={
        "person": np.arange(3),
        "household": np.array([0, 0, 1]),
        "tax_unit": np.array([0, 0, 1]),
        "spm_unit": np.array([0, 0, 1]),
    },
    entity_household={
        "person": np.array([0, 0, 1]),
        "household": np.array([0, 1]),
        "tax_unit": np.array([0, 1]),
        "spm_unit": np.array([0, 1]),
    },
)
# columns: (clone 0, hh0) in CA-1, (0, hh1) in NY-1, (1, hh0) in NY-2, (1, hh1) in CA-2
GEOGRAPHY = GeographyAssignment(
    state_fips=np.array([6, 36, 36, 6]),
    cd_geoid=np.array([601, 3601, 3602, 602]),
    block_geoid=None,
    n_base=2,
    n_clones=2,
)
DATASET_INPUTS = {
    "household_id": np.array([142, 114]),
    "state_fips": np.array([6, 6]),
    "congressional_district_geoid": np.array([601, 601]),
    "age": np.array([30, 5, 70]),
    "filing_status": np.array(["HEAD_OF_HOUSEHOLD", "SINGLE"]),
    "takes_up_snap_if_eligible": np.array([True, False]),
    "takes_up_aca_if_eligible": np.array([True, False]),
    "would_file_taxes_voluntarily": np.array([True, False]),
    "tax_unit_id": np.array([0, 1]),
    "employment_income": np.array([20_000.0, 0, 0]),
    "tax_unit_child_dependents": np.array([1, 0]),
    "age_head": np.array([30, 70]),
    "salt_deduction": np.array([300.0, 0.0]),
}


class FakeSimulation:
    """:class:`builders.policyengine.Simulation` over a model small enough to compute by hand.

    ``snap`` (SPM units): 200 and 50 in CA, half as much again in NY, only to takers.
    ``aca_ptc`` (tax unit 0 only): 40 to a taker, 10 to a non-taker (the model pays without
    take-up), twice that in NY, half of it when the unit would not file unasked. ``income_tax``
    (households): a fifth of wages less ``salt_deduction`` (an input, 300 to tax unit 0), half
    as much again in NY. Like PolicyEngine, a formula's result is kept until
    :meth:`drop_computed`, so a stage that forgets to drop reads stale values.
    """

    variable_entities = {
        name: entity
        for entity, names in {
            "person": ["age", "person_count", "employment_income"],
            "tax_unit": [
                "filing_status",
                "aca_ptc",
                "takes_up_aca_if_eligible",
                "tax_unit_count",
                "would_file_taxes_voluntarily",
                "tax_unit_id",
                "tax_unit_child_dependents",
                "age_head",
                "salt_deduction",
            ],
            "spm_unit": ["snap", "takes_up_snap_if_eligible"],
            "household": [
                "household_id",
                "state_fips",
                "congressional_district_geoid",
                "household_count",
                "income_tax",
            ],
        }.items()
        for name in names
    }

    def __init__(self) -> None:
        self.inputs = {name: values.copy() for name, values in DATASET_INPUTS.items()}
        self.computed: dict[str, np.ndarray] = {}

    def calculate(self, variable, year, map_to=None):
        assert year == YEAR
        if variable in self.inputs:
            values = self.inputs[variable]
        else:
            if variable not in self.computed:
                self.computed[variable] = self._formula(variable)
            values = self.computed[variable]
        entity = self.variable_entities[variable]
        if map_to is None or map_to == entity:
            return values
        assert map_to == "person", map_to
        return values[STRUCTURE.person_entity[entity]]

    def _formula(self, variable):
        ny = self.inputs["state_fips"] == 36  # per household; SPM and tax unit i belong to household i
        if variable == "snap":
            return np.array([200.0, 50.0]) * np.where(ny, 1.5, 1.0) * self.inputs["takes_up_snap_if_eligible"]
        if variable == "aca_ptc":
            filing = np.where(self.inputs["would_file_taxes_voluntarily"], 1.0, 0.5)
            return (
                np.where(self.inputs["takes_up_aca_if_eligible"], 40.0, 10.0)
                * [1.0, 0.0]
                * np.where(ny, 2.0, 1.0)
                * filing
            )
        if variable == "income_tax":
            wages = np.bincount(STRUCTURE.person_household, self.inputs["employment_income"], minlength=2)
            return (wages - self.inputs["salt_deduction"]) / 5 * np.where(ny, 1.5, 1.0)
        raise KeyError(variable)

    def set_input(self, variable, year, values):
        assert year == YEAR and np.shape(values) == self.inputs[variable].shape
        self.inputs[variable] = np.asarray(values).copy()

    def drop_computed(self):
        self.computed.clear()

    def neutralized(self, variable, year):
        copy = FakeSimulation()
        copy.inputs[variable] = np.zeros_like(copy.inputs[variable])
        return copy


AMOUNTS, CONSTRAINTS, TAKEUP = ["aca_ptc", "no_such_variable", "snap"], ["filing_status", "snap"], ["aca_ptc", "snap"]


def _rows(specs):
    """Target rows from (variable, geo_level, geographic_id, constraints[, reform_id])."""
    table = pd.DataFrame(
        {
            "variable": [s[0] for s in specs],
            "geo_level": [s[1] for s in specs],
            "geographic_id": [s[2] for s in specs],
            "stratum_id": range(len(specs)),
            "reform_id": [s[4] if len(s) > 4 else 0 for s in specs],
            "target_id": range(len(specs)),
        }
    )
    return plan_target_rows(table, {i: [Constraint(*c) for c in s[3]] for i, s in enumerate(specs)})


ROWS = _rows(
    [
        ("snap", "national", "US", []),
        ("aca_ptc", "state", "36", [("state_fips", "==", "36")]),
        ("household_count", "national", "US", [("snap", ">", "0")]),
        (
            "tax_unit_count",
            "district",
            "602",
            [("congressional_district_geoid", "==", "602"), ("filing_status", "==", "SINGLE")],
        ),
        ("no_such_variable", "national", "US", []),
    ]
)


def _takes_up(variable, household_id, clone):
    spec = TAKEUP_BY_VARIABLE[variable]
    return seeded_rng(spec.takeup_variable, f"{household_id}:{clone}").random() < spec.rate


def test_the_draws_the_expected_matrices_rest_on():
    draws = {(v, h, c): _takes_up(v, h, c) for v in ("snap", "aca_ptc") for h in (142, 114) for c in (0, 1)}
    # snap .273 .974 .864 .059 against 0.82; aca_ptc: hh 142 in clone 1 draws .839 against 0.672
    assert [draws["snap", h, c] for h, c in ((142, 0), (142, 1), (114, 0), (114, 1))] == [True, False, False, True]
    assert draws["aca_ptc", 142, 0] and not draws["aca_ptc", 142, 1]


def test_per_state_values_by_hand():
    simulation = FakeSimulation()
    log = []
    values = compute_state_values(simulation, YEAR, [6, 36], AMOUNTS, CONSTRAINTS, TAKEUP, log.append)
    assert values.entities == {"aca_ptc": "tax_unit", "snap": "spm_unit", "filing_status": "tax_unit"}
    np.testing.assert_array_equal(values.states, [6, 36])
    # the dataset's take-up: SPM unit 0 and tax unit 0 take up, the others do not
    np.testing.assert_array_equal(values.amounts["snap"], [[200, 0], [300, 0]])
    np.testing.assert_array_equal(values.amounts["aca_ptc"], [[40, 0], [80, 0]])
    # every take-up input True, and for the tax-unit aca_ptc once more with voluntary filing False
    np.testing.assert_array_equal(values.eligible["snap"], [[200, 50], [300, 75]])
    np.testing.assert_array_equal(values.eligible["aca_ptc"], [[40, 0], [80, 0]])
    assert list(values.eligible_nonfiling) == ["aca_ptc"]
    np.testing.assert_array_equal(values.eligible_nonfiling["aca_ptc"], [[20, 0], [40, 0]])
    # the voluntary-filing rate's inputs, from the dataset as it is: wages added in float32
    assert values.filing_inputs["tax_unit_wage_income"].dtype == np.float32
    np.testing.assert_array_equal(values.filing_inputs["tax_unit_wage_income"], [20_000, 0])
    np.testing.assert_array_equal(values.filing_inputs["tax_unit_child_dependents"], [1, 0])
    np.testing.assert_array_equal(values.filing_inputs["age_head"], [30, 70])
    # constraint variables per person: numbers as float32, enums as their names
    assert values.person_values["snap"].dtype == np.float32
    np.testing.assert_array_equal(values.person_values["snap"], [[200, 200, 0], [300, 300, 0]])
    np.testing.assert_array_equal(values.person_values["filing_status"], [["HEAD_OF_HOUSEHOLD"] * 2 + ["SINGLE"]] * 2)
    assert values.amounts["snap"].dtype == np.float64 and not values.per_clone
    assert [line.split(":")[0] for line in log] == ["  state 6 (1/2)", "  state 36 (2/2)"]
    # the dataset's take-up is back, nothing stale is left
    for name in ("takes_up_snap_if_eligible", "takes_up_aca_if_eligible", "would_file_taxes_voluntarily"):
        np.testing.assert_array_equal(simulation.inputs[name], DATASET_INPUTS[name])
    assert simulation.computed == {}


def test_per_clone_values_by_hand():
    simulation = FakeSimulation()
    values = compute_clone_values(simulation, YEAR, GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, TAKEUP)
    assert values.per_clone and values.eligible == {} and values.eligible_nonfiling == {}
    np.testing.assert_array_equal(values.states, [6, 36])
    # clone 0: hh0 in CA draws snap and ACA; hh1 in NY declines snap.
    # clone 1: hh0 in NY declines both (ACA: 10, twice in NY); hh1 in CA takes up snap.
    np.testing.assert_array_equal(values.amounts["snap"], [[200, 0], [0, 50]])
    np.testing.assert_array_equal(values.amounts["aca_ptc"], [[40, 0], [20, 0]])
    np.testing.assert_array_equal(values.person_values["snap"], [[200, 200, 0], [0, 0, 50]])
    # the dataset's places and take-up are back
    for name, original in DATASET_INPUTS.items():
        np.testing.assert_array_equal(simulation.inputs[name], original)
    assert simulation.computed == {}
    with pytest.raises(ValueError, match="3 base records, the dataset 2 households"):
        wrong = GeographyAssignment(np.full(3, 6), np.full(3, 601), None, n_base=3, n_clones=1)
        compute_clone_values(simulation, YEAR, wrong, STRUCTURE, AMOUNTS, CONSTRAINTS, TAKEUP)


def _assert_same_values(a, b):
    assert a.entities == b.entities and a.per_clone == b.per_clone
    for field in ("amounts", "person_values", "eligible", "eligible_nonfiling", "filing_inputs"):
        got, expected = getattr(a, field), getattr(b, field)
        assert got.keys() == expected.keys(), field
        for name in expected:
            assert got[name].dtype == expected[name].dtype and np.array_equal(got[name], expected[name]), name


@pytest.mark.parametrize("mode", ["per_state", "per_clone"])
def test_runs_kept_in_a_chunk_directory_resume_as_the_same_values(mode, tmp_path):
    dataset = tmp_path / "dataset.h5"
    dataset.write_bytes(b"the runs' signature covers this file's sha256")
    chunks = tmp_path / "chunks"

    def compute(execute, simulation=None, log=None, takeup=TAKEUP):
        simulation = simulation or FakeSimulation()
        log = [] if log is None else log
        if mode == "per_state":
            return compute_state_values(
                simulation, YEAR, [6, 36], AMOUNTS, CONSTRAINTS, takeup, log.append, execute=execute
            )
        return compute_clone_values(
            simulation, YEAR, GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, takeup, log.append, execute=execute
        )

    plain = compute(None)
    _assert_same_values(compute(RunExecutor(dataset, chunk_dir=chunks)), plain)
    names = ["state_06.npz", "state_36.npz"] if mode == "per_state" else ["clone_000000.npz", "clone_000001.npz"]
    assert sorted(p.name for p in chunks.iterdir()) == names
    with pytest.raises(ValueError, match="holds the runs of an earlier build: resume from them"):
        RunExecutor(dataset, chunk_dir=chunks)

    # A build killed after its first run: the second run's file is missing. Resumed, the first is
    # read back (no model call), the second runs, and every value is the same bits.
    (chunks / names[1]).unlink()
    simulation, log = FakeSimulation(), []
    calls = []
    calculate = simulation.calculate
    simulation.calculate = lambda variable, *a, **k: calls.append(variable) or calculate(variable, *a, **k)
    resumed = compute(RunExecutor(dataset, chunk_dir=chunks, resume=True), simulation, log)
    _assert_same_values(resumed, plain)
    assert "read back from" in log[0] and log[1].endswith(" s")
    # one run's snap: its amounts and per person, and per state its eligible amounts too
    assert calls.count("snap") == (3 if mode == "per_state" else 2)
    for name, original in DATASET_INPUTS.items():  # and the dataset's inputs are back
        np.testing.assert_array_equal(simulation.inputs[name], original)

    # A run made from other inputs (here no take-up draws) is never read back as this build's.
    with pytest.raises(ValueError, match=f"the build chunk .*{names[0]} was made from other inputs"):
        compute(RunExecutor(dataset, chunk_dir=chunks, resume=True), takeup=[])
    dataset.write_bytes(b"another dataset")
    with pytest.raises(ValueError, match="was made from other inputs"):
        compute(RunExecutor(dataset, chunk_dir=chunks, resume=True))


def test_an_executor_hashes_its_dataset_once_for_all_its_calls(tmp_path, monkeypatch):
    """A county-level build calls its executor twice (states, then counties): one sha256 of the dataset."""
    import jaxcal.io

    dataset = tmp_path / "dataset.h5"
    dataset.write_bytes(b"hashed once")
    hashed, sha256_file = [], jaxcal.io.sha256_file
    monkeypatch.setattr(jaxcal.io, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    execute = RunExecutor(dataset, chunk_dir=tmp_path / "chunks")
    for states in ([6], [36]):
        compute_state_values(FakeSimulation(), YEAR, states, AMOUNTS, CONSTRAINTS, TAKEUP, print, execute=execute)
    assert hashed == [dataset]
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["state_06.npz", "state_36.npz"]


def fake_simulation(dataset):
    """A worker's simulation: :class:`FakeSimulation` (module level, so a spawned process imports it)."""
    return FakeSimulation()


@pytest.mark.parametrize("mode", ["per_state", "per_clone"])
def test_runs_on_worker_processes_are_the_same_values(mode, tmp_path):
    dataset = tmp_path / "dataset.h5"
    dataset.write_bytes(b"the workers load the fake model from this path")
    states = [6, 36, 48, 12]  # four runs: two queued on the worker, two left for this process
    log = []
    execute = RunExecutor(dataset, chunk_dir=tmp_path / "chunks", workers=2, load=fake_simulation)
    if mode == "per_state":
        plain = compute_state_values(FakeSimulation(), YEAR, states, AMOUNTS, CONSTRAINTS, TAKEUP)
        spread = compute_state_values(
            FakeSimulation(), YEAR, states, AMOUNTS, CONSTRAINTS, TAKEUP, log.append, execute=execute
        )
    else:
        plain = compute_clone_values(FakeSimulation(), YEAR, GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, TAKEUP)
        spread = compute_clone_values(
            FakeSimulation(), YEAR, GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, TAKEUP, log.append, execute=execute
        )
    _assert_same_values(spread, plain)
    n_runs = len(states) if mode == "per_state" else GEOGRAPHY.n_clones
    assert log[0] == f"  {n_runs} runs on 2 processes" and len(log) == 1 + n_runs
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == n_runs  # each written by the process that ran it


def test_the_executor_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="workers must be at least 1"):
        RunExecutor(tmp_path / "d.h5", workers=0)
    with pytest.raises(ValueError, match="resuming needs the chunk directory"):
        RunExecutor(tmp_path / "d.h5", resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        RunExecutor(tmp_path / "d.h5", chunk_dir=tmp_path / "file")
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "state_06.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="cannot read the build chunk .*state_06.npz .*delete it to run it again"):
        compute_state_values(
            FakeSimulation(),
            YEAR,
            [6],
            AMOUNTS,
            CONSTRAINTS,
            TAKEUP,
            execute=RunExecutor(tmp_path / "file", chunk_dir=tmp_path / "chunks", resume=True),
        )


# Rows: national household_count/[snap>0], no_such_variable, snap; state 36 aca_ptc; district 602 tax_unit_count.
DRAWN = [
    [1, 0, 0, 1],  # SPM units with snap after the draws: hh0 in clone 0, hh1 in clone 1
    [0, 0, 0, 0],  # a variable the model does not know: an empty row
    [200, 0, 0, 50],  # CA hh0 takes up 200; NY hh1 and NY hh0 decline; CA hh1 takes up 50
    [0, 0, 20, 0],  # NY columns: hh1 has no credit, hh0 (clone 1) declines: per clone what the model pays it, 10 x 2
    [0, 0, 0, 1],  # district 602: clone 1 of hh1, a single filer
]
DATASET_TAKEUP = [
    [1, 0, 1, 0],  # SPM unit 0 takes up, wherever it lies
    [0, 0, 0, 0],
    [200, 0, 300, 0],
    [0, 0, 80, 0],  # tax unit 0 takes up: 40 x 2 in NY
    [0, 0, 0, 1],
]


@pytest.mark.parametrize("mode", ["per_state", "per_clone"])
@pytest.mark.parametrize("rerandomize", [True, False])
def test_matrix_by_hand_through_both_modes(mode, rerandomize):
    assert ROWS.table["target_name"].tolist() == [
        "national/household_count/[snap>0]",
        "national/no_such_variable",
        "national/snap",
        "state_36/aca_ptc",
        "cd_602/tax_unit_count/[filing_status==SINGLE]",
    ]
    simulation = FakeSimulation()
    takeup = TAKEUP if rerandomize else []
    if mode == "per_state":
        values = compute_state_values(simulation, YEAR, [6, 36], AMOUNTS, CONSTRAINTS, takeup)
    else:
        values = compute_clone_values(simulation, YEAR, GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, takeup)
    values.entities.update(known_entities(simulation, ["household_count", "tax_unit_count", "no_such_count"]))
    r, c, v = assemble_matrix(ROWS, GEOGRAPHY, STRUCTURE, values, rerandomize_takeup=rerandomize)
    assert (v != 0).all() and r.dtype == c.dtype == np.int32 and v.dtype == np.float32
    dense = np.zeros((len(ROWS.table), GEOGRAPHY.n_columns))
    np.add.at(dense, (r, c), v)
    expected = np.array(DRAWN if rerandomize else DATASET_TAKEUP)
    if rerandomize and mode == "per_state":
        expected[3] = 0  # policyengine-us-data's rule: eligible amount times take-up, so a non-taker gets 0
    np.testing.assert_array_equal(dense, expected)
    np.testing.assert_array_equal(np.asarray(to_bcoo(r, c, v, dense.shape).todense()), dense)


def test_policyengine_adapter_over_a_core_like_simulation():
    """:class:`builders.policyengine.PolicyEngineSimulation` on a stand-in with policyengine-core's attributes."""
    from builders.policyengine import PolicyEngineSimulation

    def variable(entity):
        return SimpleNamespace(entity=SimpleNamespace(key=entity))

    class Status:  # an EnumArray: codes that decode to names
        def decode_to_str(self):
            return np.array(["SINGLE", "JOINT"], object)

    series = {"2022-01-01": 281.148, "2024-01-01": 309.794}.__getitem__
    population = SimpleNamespace(total=lambda date: 3e8 + int(date[:4]))
    parameters = SimpleNamespace(
        gov=SimpleNamespace(bls=SimpleNamespace(cpi=SimpleNamespace(cpi_u=series))),
        calibration=SimpleNamespace(gov=SimpleNamespace(census=SimpleNamespace(populations=population))),
    )
    variables = {
        "snap": variable("spm_unit"),
        "ssi": variable("person"),
        "medicaid_enrolled": variable("person"),
        "aca_ptc": variable("tax_unit"),
        "filing_status": variable("tax_unit"),
    }

    class CoreSimulation:  # the parts of policyengine_core's Simulation the adapter uses
        tax_benefit_system = SimpleNamespace(variables=variables, parameters=parameters)

        def __init__(self):
            self.branches, self.calls = {"no_snap": object()}, []

        def calculate(self, name, period, map_to=None):
            self.calls.append((name, period, map_to))
            return Status() if name == "filing_status" else [1.5, 2.5]

        def set_input(self, *args):
            self.calls.append(("set_input", *args))

        def drop_computed_arrays(self):
            self.calls.append("dropped")

    core = CoreSimulation()
    simulation = PolicyEngineSimulation(core)
    assert simulation.variable_entities == {
        "snap": "spm_unit",
        "ssi": "person",
        "medicaid_enrolled": "person",
        "aca_ptc": "tax_unit",
        "filing_status": "tax_unit",
    }
    assert simulation.calculate("filing_status", YEAR).tolist() == ["SINGLE", "JOINT"]
    result = simulation.calculate("snap", YEAR, map_to="person")
    assert isinstance(result, np.ndarray) and result.tolist() == [1.5, 2.5]
    simulation.set_input("state_fips", YEAR, [6])
    simulation.drop_computed()
    assert core.calls == [
        ("filing_status", YEAR, None),
        ("snap", YEAR, "person"),
        ("set_input", "state_fips", YEAR, [6]),
        "dropped",
    ]
    assert core.branches == {}
    cpi, population = simulation.uprating_indices()
    assert cpi(2024) / cpi(2022) == pytest.approx(309.794 / 281.148) and population(2024) == 3e8 + 2024


def test_only_the_adapter_names_policyengine_us():
    def reaches_the_model(node):
        if isinstance(node, ast.Import):
            return any(alias.name.split(".")[0] == "policyengine_us" for alias in node.names)
        if isinstance(node, ast.ImportFrom):
            return (node.module or "").split(".")[0] == "policyengine_us"
        return isinstance(node, ast.Call) and any(
            isinstance(a, ast.Constant) and a.value == "policyengine_us" for a in node.args
        )

    modules = pathlib.Path(builders.__file__).parent.glob("*.py")
    touching = {m.name for m in modules if any(map(reaches_the_model, ast.walk(ast.parse(m.read_text()))))}
    assert touching == {"policyengine.py"}


def test_importing_builders_does_not_import_policyengine_us():
    names = sorted(m.name for m in pkgutil.iter_modules(builders.__path__))
    assert {"policyengine", "simulation", "assembly", "target_rows", "unified_matrix"} <= set(names)
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module('builders.' + name)\n"
        "    if 'policyengine_us' in sys.modules:\n"
        "        sys.exit('importing builders.' + name + ' imported policyengine_us')\n"
    )
    root = pathlib.Path(builders.__file__).parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", ["per_state", "per_clone"])
def test_tax_expenditures_by_hand_through_both_modes(mode):
    """Repealing tax unit 0's 300 deduction adds 60 to its household's tax in CA, 90 in NY; the
    expenditure rows take that for households with a qualifying member, the deduction's own row
    the deduction."""
    rows = _rows(
        [
            ("salt_deduction", "state", "36", [("state_fips", "==", "36"), ("age", "<", "18")], 1),
            ("salt_deduction", "national", "US", [], 1),
            ("salt_deduction", "national", "US", [("age", ">=", "65")], 1),
            ("salt_deduction", "national", "US", []),
        ]
    )
    assert rows.table["target_name"].tolist() == [
        "national/salt_deduction",
        "national/salt_deduction_expenditure",
        "national/salt_deduction_expenditure/[age>=65]",
        "state_36/salt_deduction_expenditure/[age<18]",
    ]
    simulation = FakeSimulation()
    expenditures = ["salt_deduction", "no_such_variable"]
    if mode == "per_state":
        values = compute_state_values(
            simulation, YEAR, [6, 36], ["salt_deduction"], ["age"], [], expenditure_variables=expenditures
        )
    else:
        values = compute_clone_values(
            simulation, YEAR, GEOGRAPHY, STRUCTURE, ["salt_deduction"], ["age"], [], expenditure_variables=expenditures
        )
    # rows: states CA, NY, or clones (clone 0: hh0 in CA; clone 1: hh0 in NY); hh1 pays no tax either way
    assert list(values.expenditures) == ["salt_deduction"]
    assert values.expenditures["salt_deduction"].dtype == np.float32
    np.testing.assert_array_equal(values.expenditures["salt_deduction"], [[60, 0], [90, 0]])
    np.testing.assert_array_equal(simulation.inputs["salt_deduction"], DATASET_INPUTS["salt_deduction"])
    r, c, v = assemble_matrix(rows, GEOGRAPHY, STRUCTURE, values, rerandomize_takeup=True)
    dense = np.zeros((len(rows.table), GEOGRAPHY.n_columns))
    np.add.at(dense, (r, c), v)
    # columns: (clone 0, hh0) in CA, (0, hh1) in NY, (1, hh0) in NY, (1, hh1) in CA
    np.testing.assert_array_equal(dense, [[300, 0, 300, 0], [60, 0, 90, 0], [0, 0, 0, 0], [0, 0, 90, 0]])


class CountySimulation(FakeSimulation):
    """:class:`FakeSimulation` with a ``county`` and a ZIP code: ``aca_ptc`` is three times as
    much in Los Angeles County at ZIP 90001 (2.5 times at any other ZIP there)."""

    variable_entities = {**FakeSimulation.variable_entities, "county": "household", "zip_code": "household"}

    def __init__(self) -> None:
        super().__init__()
        self.inputs |= {"county": np.array(["UNKNOWN"] * 2), "zip_code": np.array(["UNKNOWN"] * 2)}

    def _formula(self, variable):
        values = super()._formula(variable)
        if variable == "aca_ptc":
            in_la = self.inputs["county"] == "LOS_ANGELES_COUNTY_CA"
            values = values * np.where(in_la, np.where(self.inputs["zip_code"] == "90001", 3.0, 2.5), 1.0)
        return values


COUNTY_NAMES = {"06037": "LOS_ANGELES_COUNTY_CA", "36047": "KINGS_COUNTY_NY"}
# GEOGRAPHY's columns on blocks: (clone 0, hh0) and (1, hh1) in Los Angeles, the others in Kings County.
COUNTY_GEOGRAPHY = GeographyAssignment(
    state_fips=GEOGRAPHY.state_fips,
    cd_geoid=GEOGRAPHY.cd_geoid,
    block_geoid=np.array(["060370001001001", "360470001001001", "360470002001001", "060370002001001"]),
    n_base=2,
    n_clones=2,
)


@pytest.mark.parametrize("mode", ["per_state", "per_clone"])
def test_county_level_by_hand_through_both_modes(mode):
    """Per state, one run per county (its state, ``county`` and Los Angeles' ZIP code set) for
    the county variables; per clone, every clone's counties set: hh0's aca_ptc (40 in CA, 80 in
    NY with its own take-up) is 120 in Los Angeles, 80 in Kings County, in either mode."""
    simulation = CountySimulation()
    rows = _rows([("aca_ptc", "national", "US", []), ("snap", "national", "US", [])])
    if mode == "per_state":
        values = compute_state_values(simulation, YEAR, [6, 36], AMOUNTS, CONSTRAINTS, TAKEUP, counties=COUNTY_NAMES)
        np.testing.assert_array_equal(values.counties, ["06037", "36047"])
        assert set(values.by_county) == {"amounts", "eligible", "eligible_nonfiling"}
        assert {kind: list(found) for kind, found in values.by_county.items()} == dict.fromkeys(
            values.by_county, ["aca_ptc"]
        )  # snap is not a county variable
        np.testing.assert_array_equal(values.by_county["amounts"]["aca_ptc"], [[120, 0], [80, 0]])
        np.testing.assert_array_equal(values.by_county["eligible"]["aca_ptc"], [[120, 0], [80, 0]])
        np.testing.assert_array_equal(values.by_county["eligible_nonfiling"]["aca_ptc"], [[60, 0], [40, 0]])
        np.testing.assert_array_equal(values.amounts["aca_ptc"], [[40, 0], [80, 0]])  # the states' stay as they were
    else:
        values = compute_clone_values(
            simulation, YEAR, COUNTY_GEOGRAPHY, STRUCTURE, AMOUNTS, CONSTRAINTS, counties=COUNTY_NAMES
        )
        np.testing.assert_array_equal(values.amounts["aca_ptc"], [[120, 0], [80, 0]])
    r, c, v = assemble_matrix(rows, COUNTY_GEOGRAPHY, STRUCTURE, values, rerandomize_takeup=False)
    dense = np.zeros((2, 4))
    dense[r, c] = v
    np.testing.assert_array_equal(dense, [[120, 0, 80, 0], [200, 0, 300, 0]])
    for name in ("county", "zip_code"):  # the dataset's places are back
        np.testing.assert_array_equal(simulation.inputs[name], ["UNKNOWN"] * 2)
    if mode == "per_state":
        with pytest.raises(ValueError, match="a column lies in a county without PolicyEngine values"):
            assemble_matrix(rows, GEOGRAPHY, STRUCTURE, values)  # no blocks, no counties
