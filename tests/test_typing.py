"""Typing: _core.pyi describes exactly what the compiled module has, the stub and py.typed
ship in the wheel, and mypy passes on the package (when mypy is installed)."""

import ast
import os
import subprocess
import sys

import pytest

import layerprop as lp

PKG = os.path.dirname(os.path.abspath(lp.__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def stub_names():
    with open(os.path.join(PKG, "_core.pyi")) as f:
        tree = ast.parse(f.read())
    funcs, classes = set(), {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            funcs.add(node.name)
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = ({n.name for n in node.body if isinstance(n, ast.FunctionDef)} - {"__init__"}) | {
                n.target.id for n in node.body  # enum members: `ReLU: Act`
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")}
    return funcs, classes


def test_stub_lists_exactly_the_core_api():
    funcs, classes = stub_names()
    core = lp._core
    public = {n for n in dir(core) if not n.startswith("__")}
    core_classes = {n for n in public if isinstance(getattr(core, n), type)}
    assert set(classes) == core_classes
    assert funcs == public - core_classes
    for name, members in classes.items():
        cls = getattr(core, name)
        inherited = set(dir(BaseException)) if issubclass(cls, BaseException) else set()
        real = {n for n in dir(cls) if not n.startswith("_")} - inherited
        assert members == real, f"{name}: stub-only {members - real}, missing {real - members}"


def test_stub_signatures_match_the_bindings():
    # pybind11 docstrings carry the argument names: the stub uses the same ones.
    _funcs, classes = stub_names()
    with open(os.path.join(PKG, "_core.pyi")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = getattr(lp._core, node.name)
        for fn in node.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
                continue
            obj = getattr(cls, fn.name)
            if isinstance(obj, property):
                continue
            doc = (obj.__doc__ or "").splitlines()[0]
            args = [a.arg for a in fn.args.args[1:]]
            for a in args:
                assert f"{a}:" in doc, f"{node.name}.{fn.name}: argument {a!r} not in {doc!r}"


def test_py_typed_and_stub_ship_in_the_wheel():
    assert os.path.isfile(os.path.join(PKG, "py.typed"))
    assert os.path.isfile(os.path.join(PKG, "_core.pyi"))
    try:
        from pathlib import Path
        from scikit_build_core.build._pathutil import packages_to_file_mapping
    except ImportError:
        pytest.skip("scikit-build-core (its file mapping) not installed")
    try:
        mapping = packages_to_file_mapping(packages={"layerprop": os.path.join(ROOT, "python", "layerprop")},
                                           platlib_dir=Path("/wheel"), include=[], src_exclude=[],
                                           target_exclude=[], build_dir="build/x", mode="default")
    except TypeError:
        pytest.skip("this scikit-build-core's file mapping has another signature")
    targets = {os.path.relpath(v, "/wheel") for v in mapping.values()}
    assert {"layerprop/py.typed", "layerprop/_core.pyi", "layerprop/io.py"} <= targets


def test_mypy_passes_on_the_package():
    pytest.importorskip("mypy")
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", os.path.join(ROOT, "pyproject.toml"),
                        os.path.join(ROOT, "python", "layerprop")], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
