"""The layer rules of docs/architecture.md, checked on calib's source with ast (nothing of calib is imported).

Every module of calib/ sits in one layer of LAYERS; every import in it, function-local ones included (calib
imports lazily so that a parameter check never loads torch), points to its own layer or a lower one. Besides:
calib/errors.py imports nothing of calib; uq/ and softening/ import no model adapter and no CLI; there is no
import cycle; no module is over MAX_MODULE_LINES lines and no function over MAX_FUNCTION_LINES; no error raised in
workflows/ or data/ names a command-line flag (the library names its keywords, the CLI maps them to its flags).

Names taken from a package that re-exports lazily (``calib``'s ``_API``, ``calib.models``' ``_LAZY``: dicts of
name → module) count as imports of the module that defines them, so ``from calib import calibrate`` inside
uq/ is caught like ``from calib.workflows.calibration import calibrate``.
"""

import ast
import pathlib
import re
import textwrap

PACKAGE = pathlib.Path(__file__).parent.parent / "calib"

#: the layers, lowest first; a module belongs to the entry naming it or its package ("calib" itself only by
#: name: the package's __init__, which holds __version__ and imports nothing, its public names lazily)
LAYERS = (
    ("foundation", ("calib", "calib.errors", "calib.settings", "calib.schema")),
    ("data", ("calib.data",)),
    ("core", ("calib.models", "calib.softening", "calib.uq")),  # peers, but see NOT_FROM_MATHS
    ("surface", ("calib.artifact", "calib.predictor", "calib.calculator", "calib.io")),
    ("workflows", ("calib.workflows",)),
    ("cli", ("calib.cli",)),
)
RANK = {name: k for k, (name, _) in enumerate(LAYERS)}

#: the maths packages, and what they never import although it shares their layer or lies above it
MATHS = ("calib.uq", "calib.softening")
NOT_FROM_MATHS = ("calib.models", "calib.cli")

#: the library packages whose errors speak in keywords, never in command-line flags
LIBRARY_WORDED = ("calib.workflows", "calib.data")
FLAG = re.compile(r"--[A-Za-z]")

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

#: modules over MAX_MODULE_LINES, each with why it is allowed for now. They are being rewritten on main by
#: another change; empty this table as each is split, and add nothing to it.
LONG_MODULES = {
    "calib.predictor": "being split on main (CalibratedPredictor rewrite)",
    "calib.workflows.calibration": "being split on main (calibrate rewrite)",
    "calib.uq.errormodel": "being edited on main (uq/variance.py takes its NLLs); split once that lands",
}

#: functions over MAX_FUNCTION_LINES (module.qualname) allowed for now: none; add nothing to it
LONG_FUNCTIONS: set = set()


# --------------------------------------------------------------------------- the checker


def module_name(path: pathlib.Path) -> str:
    """``calib/uq/llpr.py`` → ``calib.uq.llpr``; a package's ``__init__.py`` → the package."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> str | None:
    """The layer of ``module`` (the longest entry of LAYERS that names it or its package), None if none."""
    best, length = None, -1
    for layer, entries in LAYERS:
        for e in entries:
            if (module == e or (e != "calib" and module.startswith(e + "."))) and len(e) > length:
                best, length = layer, len(e)
    return best


def lazy_names(tree: ast.Module) -> dict[str, str]:
    """The lazy re-exports of a package's __init__: every module-level dict literal of name → "calib..."."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and node.value.keys:
            keys, values = node.value.keys, node.value.values
            if all(isinstance(v, ast.Constant) and str(v.value).startswith("calib.") for v in values):
                out.update({k.value: v.value for k, v in zip(keys, values) if isinstance(k, ast.Constant)})
    return out


def imports(tree: ast.Module, module: str, is_package: bool, modules: set, lazy: dict) -> list[tuple[int, str]]:
    """(line, calib module) of every import in ``tree``, at any depth: ``from P import name`` resolves to the
    submodule ``P.name``, else to the module P re-exports ``name`` from (``lazy[P]``), else to P;
    ``import calib`` followed by ``calib.name`` resolves the same way."""
    package = module if is_package else module.rpartition(".")[0]
    out = []

    def resolve(base: str, name: str) -> str:
        if f"{base}.{name}" in modules:
            return f"{base}.{name}"
        return lazy.get(base, {}).get(name, base)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "calib" or a.name.startswith("calib."):
                    parts = a.name.split(".")
                    out.append((node.lineno, next(".".join(parts[:k]) for k in range(len(parts), 0, -1)
                                                  if ".".join(parts[:k]) in modules)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "calib" or base.startswith("calib."):
                out += [(node.lineno, resolve(base, a.name)) for a in node.names]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "calib"
              and (node.attr in lazy.get("calib", {}) or f"calib.{node.attr}" in modules)):
            out.append((node.lineno, resolve("calib", node.attr)))
    return out


def rule_violations(module: str, edges: list[tuple[int, str]]) -> list[str]:
    """The imports of ``module`` that break a rule, in words."""
    bad, here = [], layer_of(module)
    for line, target in edges:
        there = layer_of(target)
        where = f"{module}:{line} imports {target}"
        if module == "calib.errors" and target != module:
            bad.append(f"{where}: calib/errors.py imports nothing of calib")
        if module.startswith(MATHS) and target.startswith(NOT_FROM_MATHS):
            bad.append(f"{where}: uq/ and softening/ import no model adapter and no CLI")
        if here is not None and there is not None and RANK[there] > RANK[here]:
            bad.append(f"{where}: layer {there} lies above {here}")
    return bad


def long_functions(tree: ast.Module, module: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """module.qualname → lines of every function (``def`` to its last line) longer than ``limit``."""
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                n = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and n > limit:
                    out[name] = n
                visit(child, name)
            else:
                visit(child, prefix)

    visit(tree, module)
    return out


def flags_in_raises(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-string parts included) inside a ``raise`` that names a flag
    (``--`` followed by a letter)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            found += [(node.lineno, c.value) for c in ast.walk(node.exc)
                      if isinstance(c, ast.Constant) and isinstance(c.value, str) and FLAG.search(c.value)]
    return found


def find_cycle(graph: dict[str, set]) -> list[str] | None:
    """One import cycle of ``graph`` (module → the modules it imports) as a path, or None."""
    state: dict = {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [m, n] if n in stack else stack + [m, n]
            if n not in state:
                found = visit(n, stack + [m])
                if found:
                    return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return None


def _package():
    """(module → (path, tree)), the set of module names, and the lazy re-exports of each package."""
    files = {module_name(p): (p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))}
    lazy = {m: lazy_names(tree) for m, (p, tree) in files.items() if p.name == "__init__.py"}
    return files, set(files), lazy


FILES, MODULES, LAZY = _package()
EDGES = {m: imports(tree, m, p.name == "__init__.py", MODULES, LAZY) for m, (p, tree) in FILES.items()}


# --------------------------------------------------------------------------- the rules on calib


def test_every_module_has_a_layer():
    assert [m for m in FILES if layer_of(m) is None] == [], "place these modules in LAYERS"


def test_imports_keep_the_layers():
    bad = [v for m, edges in EDGES.items() for v in rule_violations(m, edges)]
    assert bad == [], "\n".join(bad)


def test_errors_imports_nothing_of_calib():
    assert EDGES["calib.errors"] == []


def test_library_errors_name_no_command_line_flag():
    library = [m for m in FILES if any(m == pkg or m.startswith(pkg + ".") for pkg in LIBRARY_WORDED)]
    bad = [f"{m}:{line}: {text!r}" for m in library for line, text in flags_in_raises(FILES[m][1])]
    assert bad == [], "word these in the library's keywords (the CLI maps them, calib.errors.named_as):\n" + \
        "\n".join(bad)


def test_no_import_cycles_in_calib():
    graph = {m: {t for _, t in edges if t != m} for m, edges in EDGES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_is_too_long():
    lengths = {m: len(p.read_text().splitlines()) for m, (p, _) in FILES.items()}
    long = {m: n for m, n in lengths.items() if n > MAX_MODULE_LINES and m not in LONG_MODULES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"
    assert all(lengths[m] > MAX_MODULE_LINES for m in LONG_MODULES), "split already: remove it from LONG_MODULES"


def test_no_function_is_too_long():
    found = {name: n for m, (_, tree) in FILES.items() for name, n in long_functions(tree, m).items()}
    long = {name: n for name, n in found.items() if name not in LONG_FUNCTIONS}
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"


def test_the_allow_lists_name_code_that_exists():
    functions = {name for m, (_, tree) in FILES.items() for name in long_functions(tree, m, limit=0)}
    assert LONG_FUNCTIONS <= functions and set(LONG_MODULES) <= MODULES


# --------------------------------------------------------------------------- the checker on made-up code


SNIPPET = textwrap.dedent('''
    """A made-up calib/uq/fake.py."""
    import numpy as np

    from calib.data.structures import chemsys
    from .ood import DescriptorStats


    def fit():
        from ..models import base
        from calib import calibrate, schema
        import calib

        return calib.CalibratedPredictor
''')


def test_the_checker_sees_local_relative_and_lazy_imports():
    modules = MODULES | {"calib.uq.fake"}
    edges = imports(ast.parse(SNIPPET), "calib.uq.fake", False, modules, LAZY)
    assert sorted(t for _, t in edges) == sorted(["calib.data.structures", "calib.uq.ood", "calib.models.base",
                                                  "calib.workflows.calibration", "calib.schema", "calib",
                                                  "calib.predictor"])
    bad = rule_violations("calib.uq.fake", edges)
    assert any("calib.models.base" in v and "no model adapter" in v for v in bad)
    for upward in ("calib.workflows.calibration", "calib.predictor"):
        assert any(f"imports {upward}: layer" in v for v in bad), upward
    # the schema and the settings are foundation: anything may read them
    assert not any(x in v for v in bad for x in ("calib.data.structures", "calib.uq.ood", "calib.schema"))
    assert rule_violations("calib.errors", [(3, "calib.data.ncio")])  # errors.py imports nothing of calib
    assert not rule_violations("calib.cli.app", [(3, "calib.workflows.screen")])  # downward is fine


def test_the_checker_counts_function_lines_and_finds_cycles():
    body = "\n".join(f"    x{k} = {k}" for k in range(80))  # 81 lines with the def
    src = f"class A:\n    def short(self):\n        return 1\n\n    def long(self):\n{textwrap.indent(body, '    ')}\n"
    src += f"\n\ndef outer():\n    def inner():\n{textwrap.indent(body, '    ')}\n    return inner\n"
    found = long_functions(ast.parse(src), "calib.fake")
    assert found == {"calib.fake.A.long": 81, "calib.fake.outer": 83, "calib.fake.outer.inner": 81}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_checker_finds_flags_in_raised_messages():
    src = textwrap.dedent("""
        def f(x):
            if x:
                raise ValueError(f"bad {x}: pass --overwrite")
            raise KeyError("overwrite=True, x-y, a -- b, --1")
        msg = "--not-in-a-raise"
    """)
    assert flags_in_raises(ast.parse(src)) == [(4, ": pass --overwrite")]
