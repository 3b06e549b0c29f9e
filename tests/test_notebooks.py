"""The research notebooks (notebooks/) run top to bottom, render their plots, and compute what they claim.

Each notebook is executed with nbclient in a fresh kernel (the interpreter running the
tests, through a kernel spec written to a temporary directory, so nothing is registered
globally), its working directory and outputs in a temporary directory, with
``JAXCAL_NOTEBOOK_SMALL=1``: the notebooks in ``HAS_SMALL`` then pick their small settings
(01 a small demo package; 02 small sections 2 and 3, its step-by-step comparison at its
defaults; 03 a small problem), and 04 runs at its defaults. Each notebook writes
``results.json`` to ``$JAXCAL_NOTEBOOK_OUTPUT``; the checks read it and assert what the
notebook's text claims. The executed notebook
is kept in the temporary directory for inspection (the committed ``.ipynb`` has no outputs).

Every execution also checks what a user sees (:func:`check_what_users_see`): no warning on
stderr, and every figure rendered titled, with both axes labelled (or showing category
names), as a probe cell run before the notebook records them.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = pathlib.Path(__file__).parents[1] / "notebooks"
NAMES = ["01_quickstart", "02_parity", "03_tiers", "04_multi_device"]
# Notebooks with small settings for the tests (JAXCAL_NOTEBOOK_SMALL=1) besides their defaults;
# the others run at their defaults here, so that what their text claims is what is checked.
HAS_SMALL = {"01_quickstart", "02_parity", "03_tiers"}
MIN_PLOTS = {"01_quickstart": 3, "02_parity": 3, "03_tiers": 4, "04_multi_device": 2}
CELL_TIMEOUT = 900


def _kernel_manager(directory: pathlib.Path):
    """A kernel manager whose only kernel spec runs this interpreter (the project's venv)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = directory / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "jaxcal tests",
                "language": "python",
            }
        )
    )
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


# Run before the notebook's cells (and left out of the executed copy): every figure rendered
# (inline output or savefig) goes through FigureCanvasBase.print_figure; after drawing it,
# the probe appends the figure's titles and axis labels to a JSON-lines file.
FIGURE_PROBE = """
import json as _json
import re as _re
import matplotlib.backend_bases as _backend_bases

def _probe_print_figure(self, *args, _print_figure=_backend_bases.FigureCanvasBase.print_figure, **kwargs):
    figure = self.figure
    result = _print_figure(self, *args, **kwargs)  # draws it: the tick labels are set
    def axis(a, label):
        # categorical: a tick label has words (numbers, and math text such as 10^3, have none)
        texts = [_re.sub(r"\\$[^$]*\\$", "", t.get_text()) for t in a.get_ticklabels()]
        return {"label": label, "categorical": any(c.isalpha() for t in texts for c in t)}
    record = {
        "suptitle": figure._suptitle.get_text() if figure._suptitle is not None else "",
        "axes": [
            {"title": ax.get_title(), "x": axis(ax.xaxis, ax.get_xlabel()), "y": axis(ax.yaxis, ax.get_ylabel())}
            for ax in figure.axes
        ],
    }
    with open(FIGURES, "a") as f:
        f.write(_json.dumps(record) + "\\n")
    return result

_backend_bases.FigureCanvasBase.print_figure = _probe_print_figure
"""


def check_what_users_see(name: str, notebook, figures: list[dict]) -> None:
    """No warning in any stderr output; every figure titled, its axes labelled (or categorical)."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                assert "warning" not in output["text"].lower(), (
                    f"{name}, cell {index}, shows a warning:\n{output['text']}"
                )
    assert figures, f"{name}: the probe recorded no figure"
    for figure in figures:
        for axes in figure["axes"]:
            assert axes["title"] or figure["suptitle"], f"{name}: a figure without a title: {figure}"
            for side in ("x", "y"):
                assert axes[side]["label"] or axes[side]["categorical"], (
                    f"{name}: an unlabelled {side} axis in {axes['title'] or figure['suptitle']!r}"
                )


def execute(name: str, tmp_path: pathlib.Path, **env: str):
    """Run notebooks/NAME.ipynb in tmp_path, check what users see; return (executed notebook, results.json)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    figures_path = tmp_path / "figures.jsonl"
    notebook.cells.insert(0, nbformat.v4.new_code_cell(f"FIGURES = {str(figures_path)!r}\n" + FIGURE_PROBE))
    output = tmp_path / "output"
    environment = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    environment |= {"JAXCAL_NOTEBOOK_SMALL": "1", "JAXCAL_NOTEBOOK_OUTPUT": str(output), **env}
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, km=_kernel_manager(tmp_path), resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute(env=environment)
    finally:
        notebook.cells.pop(0)  # the probe
        nbformat.write(notebook, tmp_path / f"{name}.executed.ipynb")
    figures = [json.loads(line) for line in figures_path.read_text().splitlines()] if figures_path.exists() else []
    check_what_users_see(name, notebook, figures)
    return notebook, json.loads((output / "results.json").read_text())


def png_outputs(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_paired_and_committed_without_outputs(name):
    """The .ipynb and its jupytext .py hold the same cells, and the .ipynb has no outputs."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    paired = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in paired.cells]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}.ipynb is committed with outputs"
    assert ("JAXCAL_NOTEBOOK_SMALL" in notebook.cells[1].source) == (name in HAS_SMALL)


@pytest.mark.xdist_group("demo_package")  # shares its demo build with tests/test_docs.py when in one worker
def test_quickstart(tmp_path, tmp_path_factory):
    # The guide's examples build the same small package (100 households, 1 clone, states 33 and 50):
    # whichever runs first builds it, the other finds it cached.
    demo = tmp_path_factory.getbasetemp() / "shared-demo"
    notebook, results = execute("01_quickstart", tmp_path, JAXCAL_NOTEBOOK_DEMO_DIR=str(demo))
    assert png_outputs(notebook) >= MIN_PLOTS["01_quickstart"]
    assert results["median_abs_rel_error_fitted"] < results["median_abs_rel_error_initial"]
    assert 0 < results["exported_households"] == results["records_kept"] <= results["n_records"]
    assert results["household_weight_sum"] == pytest.approx(results["weight_sum"], rel=1e-5)
    assert results["max_export_ratio_error"] is not None and results["max_export_ratio_error"] < 1e-3


def test_parity(tmp_path):
    notebook, results = execute("02_parity", tmp_path)
    assert png_outputs(notebook) >= MIN_PLOTS["02_parity"]
    # The text: section 1 runs 100 steps whatever JAXCAL_NOTEBOOK_SMALL says, and meets
    # tests/test_parity.py's float32 bounds for layout="rows": max 1e-3, 99.9% quantile 1e-4.
    assert results["exact_steps"] == 100 and results["exact_n_records"] == 1200
    assert (results["exact_bound_max"], results["exact_bound_q999"]) == (1e-3, 1e-4)
    assert results["exact_max_relative_difference"] <= results["exact_bound_max"]
    assert results["exact_q999_relative_difference"] <= results["exact_bound_q999"]
    assert results["exact_parameters_moved"] > 0.5  # the comparison is not vacuous
    kept = {name: v["records_kept"] for name, v in results["final_mean"].items()}
    assert kept["jaxcal"] == pytest.approx(kept["l0-python"], rel=0.05)
    assert results["speed_ratio"] > 0 and results["jaxcal_ms_per_epoch"] > 0


def test_tiers(tmp_path):
    notebook, results = execute("03_tiers", tmp_path)
    assert png_outputs(notebook) >= MIN_PLOTS["03_tiers"]
    frontier = results["frontier"]
    assert len(frontier) == 6 and all(row["holdout_loss"] == row["holdout_loss"] for row in frontier)  # not NaN
    kept = [row["records_kept"] for row in frontier]
    assert kept[0] > kept[-1]  # the penalty prunes
    assert results["child_records"] == results["budget"] == results["child_positive_weights"]
    assert results["comparison"]["child"]["records_kept"] == results["budget"]
    parent, child = results["parent"], results["child_refit"]
    assert parent["best_epoch"] <= parent["stopped_epoch"]
    # The text: parent and child run every epoch (no early stopping) and settle, their train
    # loss changing by under 1% of itself over their last tenth of epochs.
    assert parent["stop_reason"] == "epochs_exhausted" and parent["last_tenth_relative_change"] < 0.01
    assert child["epochs"] == child["refit_epochs"] and child["last_tenth_relative_change"] < 0.01
    assert child["best_holdout_epoch"] <= child["epochs"]
    for row in ("parent", "child", "child at its best held-out epoch"):
        assert all(
            results["comparison"][row][k] == results["comparison"][row][k] for k in ("train_loss", "holdout_loss")
        )


def test_multi_device(tmp_path):
    notebook, results = execute("04_multi_device", tmp_path)
    assert png_outputs(notebook) >= MIN_PLOTS["04_multi_device"]
    assert results["n_devices"] == 8 and results["device_counts"] == [1, 2, 4, 8]
    # The text: at the notebook's defaults, with adam-cosine, the 2-, 4- and 8-device fits
    # end within 1e-5 of the 1-device weights (relative to the largest), same draws and gates off.
    assert results["optimizer"] == "adam-cosine" and results["bound"] == 1e-5
    assert results["max_relative_difference_same_draws"] < results["bound"]
    assert results["relative_difference_gates_off"] < results["bound"]
    # ... and PE's constant-rate Adam ends further apart (the text's contrast).
    assert results["pe_adam_relative_difference_same_draws"] > results["max_relative_difference_same_draws"]
    assert results["pe_adam_relative_difference_gates_off"] > results["relative_difference_gates_off"]
