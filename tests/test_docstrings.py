"""Every public callable of `flowlab` documents itself in the API reference's anchored style.

The names audited are those docs/reference/api.md renders, read from the hook that generates it
(docs/hooks/reference.py: every name of `flowlab` without a leading underscore; flowlab has no
`__all__`), less the modules (rendered by their module docstrings) and the constants (dicts,
tuples: documented on the pages that use them). A function or class among them has a docstring
of its own; one that takes arguments has an `**Arguments:**` section (a class whose instances
are records the library returns, such as `Trajectory`, may call it `**Attributes:**`) naming
every parameter of its signature in backticks; a function that returns something (its return
annotation is not None) has a `**Returns:**` section; a function whose own body raises, or a
class whose own `__init__` or `__check_init__` does, has a `**Raises:**` section. Classes and
enumerations need no Returns. Only the source is read: no JAX computation runs."""

import ast
import importlib.util
import inspect
import pathlib
import re
import textwrap

import pytest

import flowlab

SECTION = re.compile(r"^\*\*(\w[\w ]*):\*\*", re.M)


def public_callables() -> dict[str, object]:
    """name -> object for the callables that the API page renders (modules and constants
    aside), as the docs build's hook lists them."""
    hook = pathlib.Path(__file__).resolve().parents[1] / "docs" / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("docs_reference_hook", hook)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = re.findall(r"^::: flowlab\.(\w+)$", module.api_reference(), re.M)
    out = {}
    for name in rendered:
        obj = getattr(flowlab, name)
        if inspect.ismodule(obj) or not callable(obj):
            continue
        out[name] = obj
    return out


def definition(obj) -> ast.AST:
    """The `def` or `class` statement of the object, from its source."""
    return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj)))).body[0]


def own_docstring(obj) -> str:
    """The docstring written in the object's source: what the API reference renders (mkdocstrings
    reads the source), not a base class's, nor what dataclasses or equinox generate at runtime
    in place of a missing one."""
    return ast.get_docstring(definition(obj)) or ""


def sections(doc: str) -> dict[str, str]:
    """'**Name:**' heading -> the text up to the next heading."""
    marks = list(SECTION.finditer(doc))
    return {m[1]: doc[m.end(): nxt.start() if nxt else len(doc)]
            for m, nxt in zip(marks, [*marks[1:], None])}


def parameters(obj) -> list[str]:
    return [p for p in inspect.signature(obj).parameters if p != "self"]


def raises_itself(obj) -> bool:
    """Whether the function's own body, or the class's own `__init__` / `__check_init__`, has a
    `raise` statement (nested functions aside)."""
    node = definition(obj)
    if isinstance(node, ast.ClassDef):
        bodies = [n.body for n in node.body if isinstance(n, ast.FunctionDef)
                  and n.name in ("__init__", "__check_init__")]
    else:
        bodies = [node.body]
    stack = [n for body in bodies for n in body]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Raise):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


NAMES = public_callables()


def test_the_audit_sees_the_api():
    assert len(NAMES) >= 70, sorted(NAMES)
    for name in ("simulate", "AdaptedFlow", "LeastSquaresProblem", "Trajectory", "RESULTS",
                 "SettingError", "enable_compilation_cache"):
        assert name in NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_public_callable_is_documented(name):
    obj = NAMES[name]
    doc = own_docstring(obj)
    assert doc, f"flowlab.{name} has no docstring of its own"
    found = sections(doc)
    params = parameters(obj)
    if params:
        heading = "Arguments" if "Arguments" in found or not inspect.isclass(obj) else "Attributes"
        assert heading in found, f"flowlab.{name} takes {params} but has no **Arguments:**"
        missing = [p for p in params if f"`{p}`" not in found[heading]]
        assert not missing, f"flowlab.{name}: **{heading}:** does not name {missing}"
    if raises_itself(obj):
        assert "Raises" in found, f"flowlab.{name} raises but has no **Raises:**"
    if not inspect.isclass(obj) and inspect.signature(obj).return_annotation is not None:
        assert "Returns" in found, f"flowlab.{name} returns something but has no **Returns:**"


def test_section_parser():
    doc = "One line.\n\n**Arguments:**\n\n- `a`: x\n\n**Returns:**\n\nthe sum"
    assert sections(doc) == {"Arguments": "\n\n- `a`: x\n\n", "Returns": "\n\nthe sum"}
    assert not raises_itself(public_callables)
    assert raises_itself(flowlab.smooth_labels) and raises_itself(flowlab.SquaredLoss)
    assert not raises_itself(flowlab.GradientFlow)
