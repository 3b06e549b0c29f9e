"""The layers import one way (core <- io <- workflow <- runs <- cli; builders -> core, io), and the
core stays light: checked in fresh interpreters, so nothing else in the test run interferes."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ["core", "io", "workflow", "runs", "cli"]
"""Lowest first: a module may import its own layer and those before it."""


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:  # `python -m jaxcal` is the command
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[1:] else "core"


def _imports(path: pathlib.Path, package: str) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def _module_files(top: str):
    for path in sorted((ROOT / top).rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        parts = list(relative.parts)
        package = ".".join(parts if parts[-1] == "__init__" else parts[:-1])
        if parts[-1] == "__init__":
            package = ".".join(parts[:-1])
        yield path, ".".join(p for p in parts if p != "__init__"), package


def test_no_layer_imports_a_higher_one():
    wrong = []
    for path, module, package in _module_files("jaxcal"):
        own = LAYERS.index(_layer(module))
        for imported in _imports(path, package):
            top = imported.split(".")[0]
            if top in ("builders", "torch", "l0") or top.startswith("policyengine"):
                wrong.append(f"{module} imports {imported}")
            elif top == "jaxcal" and LAYERS.index(_layer(imported)) > own:
                wrong.append(f"{module} ({LAYERS[own]}) imports {imported} ({_layer(imported)})")
    assert wrong == []


def test_builders_use_only_core_and_io_public_names():
    wrong = []
    for path, module, package in _module_files("builders"):
        for imported in _imports(path, package):
            if imported.startswith("jaxcal"):
                parts = imported.split(".")
                private = any(p.startswith("_") for p in parts)
                if (
                    private
                    or (len(parts) > 1 and parts[1] not in ("io", "cli"))
                    or len(parts) > 1
                    and parts[1] == "cli"
                    and "CommandError" not in path.read_text()
                ):
                    wrong.append(f"{module} imports {imported}")
            if imported.startswith("policyengine_us") and module != "builders.policyengine":
                wrong.append(f"{module} imports {imported} (only builders.policyengine may)")
    assert wrong == []


def _modules_after(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(result.stdout.split())


HEAVY = {"pandas", "scipy", "matplotlib", "rich", "h5py"}


@pytest.mark.parametrize(
    "code",
    [
        "import jaxcal; jaxcal.fit, jaxcal.sweep, jaxcal.TargetMatrix, jaxcal.ShardedMatrix, jaxcal.Objective",
        "import jaxcal._fit, jaxcal._sweep, jaxcal._sharding",
    ],
)
def test_the_core_pulls_in_no_host_libraries(code):
    assert HEAVY & {m.split(".")[0] for m in _modules_after(code)} == set()


def test_import_and_help_import_no_jax():
    loaded = {
        m.split(".")[0] for m in _modules_after("import jaxcal, jaxcal.cli; jaxcal.cli.build_parser().format_help()")
    }
    assert "jax" not in loaded and not HEAVY & loaded
