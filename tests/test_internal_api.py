"""No module of the package but model.py reaches into a Model's underscore state.

The other modules use a Model through its public methods and the single-underscore methods
it lists in `Model.INTERNAL_API`. This test reads the package's source (ast) and flags, in
every module other than model.py:

- an attribute access `<expr>._name` (read, write or delete; calls included) where `_name`
  is an underscore attribute a Model or Sequential has (instance attributes, found on real
  models, and methods/properties of the classes) and not in Model.INTERNAL_API;
- getattr/setattr/hasattr/delattr with such a name as a string constant.

`self._name` inside a class of another module is that class's own state and is not flagged.
"""
import ast
import pathlib
from typing import List, Set, Tuple

import numpy as np
import pytest

import layerprop as lp
from layerprop.model import Model, Sequential

PACKAGE = pathlib.Path(lp.__file__).resolve().parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def model_private_names() -> Set[str]:
    """Every underscore attribute of real models (a compiled Sequential with BatchNorm and
    Dropout, a graph model) and of the Model and Sequential classes, less the internal API."""
    seq = lp.Sequential(lp.Linear(3, 4), lp.BatchNorm1d(4), lp.ReLU(), lp.Dropout(0.1), lp.Linear(4, 2), seed=0)
    seq.compile(loss="mse", optimizer=lp.Adam())
    seq.train_step(np.ones((4, 3)), np.ones((4, 2)))
    x = lp.Input(3)
    graph = lp.Model(x, lp.add(lp.Linear(3, 2)(x), lp.Linear(3, 2)(x)), seed=0)
    names = {n for m in (seq, graph) for n in vars(m) if _private(n)}
    names |= {n for cls in (Model, Sequential) for n in vars(cls) if _private(n)}
    return names - set(Model.INTERNAL_API)


def violations(source: str, names: Set[str]) -> List[Tuple[int, str]]:
    """(line, attribute) of every reach into a Model's underscore state in `source`."""
    tree = ast.parse(source)
    own: Set[int] = set()  # `self._x` nodes inside a class body: that class's own state
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                own.add(id(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names and id(node) not in own:
            found.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
            found.append((node.lineno, node.args[1].value))
    return sorted(found)


def test_the_scan_knows_the_model_state():
    names = model_private_names()
    # the state that used to be reached into, and must not be again
    for n in ("_core", "_params", "_buffers", "_order", "_layer_prefix", "_fit_rng", "_param_names",
              "_np_dtype", "_seq_layers", "_layers", "_init_graph"):
        assert n in names, n
    for n in Model.INTERNAL_API:
        assert n not in names
        assert callable(getattr(Model, n)), n


def test_the_scan_flags_what_it_should_and_nothing_else():
    names = model_private_names()
    bad = (
        "def f(model):\n"
        "    model._core.train_step(X, y)\n"               # 2: read of _core
        "    model._params['w'][...] = 0\n"                # 3: write through _params
        "    m = Model.__new__(Model); m._init_graph(a)\n"  # 4: private method
        "    return getattr(model, '_fit_rng')\n"          # 5: getattr with a string
        "class Tool:\n"
        "    def run(self):\n"
        "        return self.model._order\n"               # 8: another object's state
    )
    assert violations(bad, names) == [(2, "_core"), (3, "_params"), (4, "_init_graph"), (5, "_fit_rng"),
                                      (8, "_order")]
    fine = (
        "def f(model, X, y):\n"
        "    Xa, ya = model._prepare(X, y)\n"              # the internal API
        "    model.parameters(); model.nodes; model.rng_state\n"
        "class Tool:\n"
        "    def __init__(self):\n"
        "        self._fns = {}; self._core = None\n"      # a class's own attributes
        "    def run(self):\n"
        "        return self._core\n"
    )
    assert violations(fine, names) == []


@pytest.mark.parametrize("path", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                                        if p.name != "model.py"))
def test_no_module_reaches_into_model_state(path):
    names = model_private_names()
    found = violations((PACKAGE / path).read_text(encoding="utf-8"), names)
    assert not found, f"{path} uses Model's underscore attributes: {found}"


def test_no_other_module_subclasses_model():
    """The `self._x` exemption above is only sound while Model's subclasses live in model.py."""
    for p in PACKAGE.rglob("*.py"):
        if p.name == "model.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                assert not bases & {"Model", "Sequential"}, f"{p.name}: class {node.name}"
