"""The shape a newcomer relies on: rooms that import one way, no cycles, small modules, import names that cannot
collide with a user's own packages, and a CLI that does not import torch to say what it can do."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"deepfm_tuner.model": ROOT / "model", "deepfm_tuner.tuner": ROOT / "tuner"}
# what each room may import (besides itself): cli -> pipeline -> trials / registry -> stores / spec -> model;
# serving -> model only
MAY_IMPORT = {
    "model": set(),
    "tuner.spec": {"model"},
    "tuner.stores": {"model"},
    "tuner.serving": {"model"},
    "tuner.trials": {"model", "tuner.spec", "tuner.stores"},
    "tuner.registry": {"model", "tuner.stores", "tuner.serving"},
    "tuner.pipeline": {"model", "tuner.spec", "tuner.stores", "tuner.trials", "tuner.registry", "tuner.serving"},
    "tuner.cli": {"model", "tuner.spec", "tuner.stores", "tuner.trials", "tuner.registry", "tuner.serving",
                  "tuner.pipeline"},
}
MAX_LINES, MAX_MODULES = 400, 12


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, at module level or inside a function (a lazy import counts too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                out.add(target if target in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != name}


def room(module: str) -> str:
    parts = module.split(".")[1:]  # without deepfm_tuner
    return "model" if parts[0] == "model" else ".".join(parts[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_no_import_cycles(graph):
    """Packages import their own modules, never the reverse, so an __init__ is no node of a cycle here."""
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in edges[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_rooms_import_one_way(graph):
    wrong = [f"{m} imports {d}" for m, deps in graph.items() for d in deps
             if room(d) != room(m) and room(d) not in MAY_IMPORT[room(m)] and d != "deepfm_tuner.tuner"]
    assert not wrong, "\n".join(sorted(wrong))


def test_modules_are_small_and_folders_few():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    folders = {}
    for path in modules().values():
        folders.setdefault(path.parent, []).append(path)
    crowded = [f"{f.relative_to(ROOT)}: {len(ps)}" for f, ps in folders.items() if len(ps) > MAX_MODULES]
    assert not crowded, f"folders with more than {MAX_MODULES} modules: {crowded}"


def test_every_package_folder_is_installed():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert folders == packages


def test_installed_names_do_not_collide_with_a_users_packages(tmp_path):
    """Outside the repository, `model` and `tuner` are the user's names: ours are deepfm_tuner.model/.tuner."""
    for name in ("model", "tuner"):
        found = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert found.returncode != 0 and "No module named" in found.stderr
    deepfm = Path(sys.executable).with_name("deepfm")
    shown = subprocess.run([str(deepfm), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and "tune" in shown.stdout


def test_help_imports_no_torch_optuna_or_mlflow(tmp_path):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom deepfm_tuner.tuner.cli import main\n"
            "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'optuna', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_prepare_on_a_cache_hit_and_status_import_no_torch(in_tmp, study_file):
    """The commands that neither train nor score start without torch or scikit-learn (seconds of imports)."""
    from click.testing import CliRunner

    from deepfm_tuner.tuner.cli import main

    study = {"study": {"name": "t", "n_trials": 1, "promote": False}, "data": {"synthetic": {"rows": 600}},
             "training": {"batch_size": 256, "max_epochs": 1, "device": "cpu", "threads": 1}}
    study_file(study, "s.yaml")
    assert CliRunner().invoke(main, ["tune", "s.yaml"]).exit_code == 0  # builds the encoded dataset, one trial
    for command in (["data", "prepare", "s.yaml"], ["status", "s.yaml"]):
        code = ("import sys\nfrom deepfm_tuner.tuner.cli import main\n"
                f"try:\n    main({command!r}, prog_name='deepfm')\nexcept SystemExit as exc:\n    assert not exc.code\n"
                "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules), file=sys.stderr)")
        out = subprocess.run([sys.executable, "-c", code], cwd=in_tmp, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stderr.strip().splitlines()[-1] == "[]", (command, out.stderr)
