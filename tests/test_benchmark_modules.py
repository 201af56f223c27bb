"""The benchmarks (benchmarks/*.py): importing one changes no JAX setting, and none imports
another (what they share is benchmarks/_common.py)."""

import ast
import importlib.util
import os
import pathlib
import sys

import jax
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(BENCHMARKS.glob("*.py"))
NAMES = {p.stem for p in MODULES}
SHARED = "_common"


def _imported(path: pathlib.Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_there_are_benchmarks():
    assert {"run", "fair_fit", "pinn", SHARED} <= NAMES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_benchmark_imports_another(path):
    others = (_imported(path) & NAMES) - {path.stem}
    if path.stem == SHARED:
        assert not others, f"{SHARED} imports benchmarks {sorted(others)}"
    else:
        assert others <= {SHARED}, f"{path.name} imports benchmarks {sorted(others - {SHARED})}"


def test_the_import_finder_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\n\ndef main():\n    from run import machine\n    import fair_fit.y\n")
    assert _imported(f) == {"os", "run", "fair_fit"}


def test_importing_a_benchmark_changes_no_jax_setting(monkeypatch):
    """Each module is imported fresh (under a name of its own, benchmarks/ on sys.path) with x64
    off: it stays off (the suite runs with it on, so a module turning it on would show)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    environ = dict(os.environ)
    before = jax.config.jax_enable_x64
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k in NAMES}
    try:
        jax.config.update("jax_enable_x64", False)
        for path in MODULES:
            sys.modules.pop(SHARED, None)
            spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert jax.config.jax_enable_x64 is False, f"importing {path.name} turned x64 on"
            assert callable(getattr(module, "main", None)) or path.stem == SHARED, path.name
    finally:
        jax.config.update("jax_enable_x64", before)
        for k in NAMES:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
        os.environ.clear()
        os.environ.update(environ)
