"""The package's three sides import each other only one way (read with ast, nothing imported).

Making never imports using; checking shares the contract (``exporter/spec.py``) with making
but none of its code; using reads an export through the contract and the checker, never the
code that made it; the contract imports none of the sides.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"

# (files, forbidden packages): no file may import a forbidden package or anything in it.
RULES = {
    "making never imports use": ("making", ("exporter.use",)),
    "checking never imports making": ("checking", ("exporter.making",)),
    "use never imports making": ("use", ("exporter.making",)),
    "spec imports no side": (
        "spec.py",
        ("exporter.making", "exporter.checking", "exporter.use"),
    ),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(path: Path, root: Path):
    """Yield ``(line, base, names)`` for every import in ``path``, at any depth.

    ``import a.b`` gives ``("a.b", None)``; ``from a import b, c`` gives ``("a", ["b", "c"])``,
    with a relative ``a`` resolved against ``path``.
    """
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base, [alias.name for alias in node.names]


def imported(path: Path, root: Path):
    """Yield (line, module) for every import in ``path``, at any depth in the file.

    ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a module
    (``from exporter import use``). Relative imports are resolved against ``path``.
    """
    for line, base, names in import_statements(path, root):
        yield line, base
        for name in names or ():
            yield line, f"{base}.{name}"


def violations(files: list[Path], forbidden: tuple[str, ...], root: Path = PACKAGE.parent):
    """``path:line imports name`` for each forbidden import; ``root`` holds ``exporter/``."""
    found = []
    for path in files:
        for line, name in imported(path, root):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(found))


def write_sources(folder: Path, sources: dict[str, str]) -> list[Path]:
    """Write each ``name: text`` of ``sources`` into ``folder`` (made); return the paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return sorted(folder / name for name in sources)


def files_of(where: str) -> list[Path]:
    target = PACKAGE / where
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


@pytest.mark.parametrize("rule", list(RULES))
def test_imports_go_one_way(rule):
    where, forbidden = RULES[rule]
    files = files_of(where)
    assert files and all(path.is_file() for path in files), f"{where} not found under {PACKAGE}"
    bad = violations(files, forbidden)
    assert not bad, f"{rule}, but:\n" + "\n".join(bad)


def test_the_check_sees_every_form_of_import(tmp_path):
    side = write_sources(tmp_path / "exporter" / "making", {
        "a.py": "from exporter import use\n",
        "b.py": "import exporter.use.keras_layer\n",
        "c.py": "def f():\n    from exporter.use.embed import run\n",
        "d.py": "from .. import use\n",
        "e.py": "from exporter import spec, errors\nimport exporter.making.card\n",
    })  # fmt: skip
    bad = violations(side, ("exporter.use",), root=tmp_path)
    assert sorted({entry.split(" imports ")[0] for entry in bad}) == [
        "exporter/making/a.py:1",
        "exporter/making/b.py:1",
        "exporter/making/c.py:2",
        "exporter/making/d.py:1",
    ]


# -- no import circle -----------------------------------------------------------------------

# The rule, strictly: every import counts wherever it stands (a function's body, an
# ``if TYPE_CHECKING:`` block, a PEP 562 ``__getattr__``), since each runs the imported
# module's body at some point, and a circle hidden in a function is a circle still. An
# import names the module it runs: ``from exporter.checking import files`` imports
# ``exporter.checking.files``; ``from exporter import save`` (a name defined in
# ``exporter/__init__.py``) and ``import exporter`` import the package ``exporter`` itself.
# Not counted: the package ``__init__`` Python runs before a submodule. Every submodule of a
# package "imports" its package that way, and Python allows it by design (the package is
# in ``sys.modules`` before its body runs); a name taken from the package is counted.


def import_graph(root: Path = PACKAGE.parent) -> dict[str, dict[str, int]]:
    """``{module: {module it imports: first line}}`` over every module under ``root/exporter``."""
    paths = {module_name(path, root): path for path in sorted((root / "exporter").rglob("*.py"))}

    def known(name: str) -> str | None:  # The deepest module the dotted name runs.
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in paths.items():
        edges = graph[name] = {}
        for line, base, names in import_statements(path, root):
            if names is None:
                targets = [known(base)]
            else:  # ``from a import b``: the module ``a.b``, or a name defined in ``a``.
                targets = [f"{base}.{b}" if f"{base}.{b}" in paths else known(base) for b in names]
            for target in targets:
                if target is not None:
                    edges.setdefault(target, line)
    return graph


def import_circles(root: Path = PACKAGE.parent) -> list[str]:
    """Each circle (a strongly connected set of modules), as its modules and the imports in it.

    ``a, b: a:12 imports b; b:3 imports a``, one string per circle, sorted.
    """
    graph = import_graph(root)
    index, low, stack, circles = {}, {}, [], []

    def visit(module: str) -> None:  # Tarjan's algorithm; the package is small.
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] != index[module]:
            return
        members = set()
        while module not in members:
            members.add(stack.pop())
        edges = [
            f"{source}:{graph[source][target]} imports {target}"
            for source in sorted(members)
            for target in sorted(graph[source])
            if target in members
        ]
        if edges:  # One module alone is a circle only if it imports itself.
            circles.append(", ".join(sorted(members)) + ": " + "; ".join(edges))

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(circles)


def test_no_import_circle():
    assert len(import_graph()) > 40, "the package's modules were not found"
    circles = import_circles()
    assert not circles, (
        "modules import each other (a function-level import counts); move what both need into "
        "a module of its own:\n" + "\n".join(circles)
    )


def test_the_circle_check_sees_every_form(tmp_path):
    write_sources(tmp_path / "exporter", {
        # exporter/__init__ imports its submodules, lazily too; they import siblings, not it.
        "__init__.py": "from exporter import a\n"
        "def __getattr__(name):\n    from .b import B\n    from .h import H\n    return B, H\n",
        "a.py": "from exporter import b\n",
        "b.py": "import exporter.c\nB = 1\n",
        "c.py": "X = 1\n",
        # A function-level import closes a circle, as module.py and save.py did.
        "d.py": "from exporter.e import E\n",
        "e.py": "E = 1\ndef f():\n    from exporter.d import f\n",
        # A relative import, and one under TYPE_CHECKING.
        "f.py": "from .g import G\nF = 1\n",
        "g.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import f\nG = 1\n",
        # A name taken from a package's __init__, which imports the module taking it.
        "h.py": "from exporter import B\nH = 1\n",
        # A circle of three, through a subpackage named in ``from ... import``.
        "sub/__init__.py": "",
        "sub/i.py": "from exporter.sub import j\n",
        "sub/j.py": "from ..sub.k import K\n",
        "sub/k.py": "import exporter.sub.i\nK = 1\n",
        "sub/l.py": "from exporter import sub\n",  # The package alone: no circle.
    })  # fmt: skip
    assert import_circles(tmp_path) == [
        "exporter, exporter.h: exporter:4 imports exporter.h; exporter.h:1 imports exporter",
        "exporter.d, exporter.e: exporter.d:1 imports exporter.e; exporter.e:3 imports exporter.d",
        "exporter.f, exporter.g: exporter.f:1 imports exporter.g; exporter.g:3 imports exporter.f",
        "exporter.sub.i, exporter.sub.j, exporter.sub.k: exporter.sub.i:1 imports "
        "exporter.sub.j; exporter.sub.j:1 imports exporter.sub.k; exporter.sub.k:1 imports "
        "exporter.sub.i",
    ]


# -- one way into a SavedModel -------------------------------------------------------------

# Ways to load a SavedModel, as dotted names ending an attribute chain or an import.
LOADERS = (
    "saved_model.load", "saved_model.loader.load", "saved_model.load_v2", "hub.load",
    "hub.KerasLayer", "TFSMLayer", "from_saved_model",  # These load it by themselves.
)  # fmt: skip
THE_WAY_IN = "exporter/checking/savedmodel.py:load"


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _loads(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return _dotted(node).endswith(LOADERS)
    if isinstance(node, ast.ImportFrom):
        return any(f"{node.module}.{alias.name}".endswith(LOADERS) for alias in node.names)
    return False


def loader_uses(files: list[Path], root: Path = PACKAGE.parent) -> list[str]:
    """``path:function`` for every reference to a SavedModel loader, called or not.

    ``function`` is the innermost function around it, or ``<module>``.
    """
    found = set()

    def visit(node: ast.AST, path: Path, owner: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            owner = node.name
        if _loads(node):
            found.add(f"{path.relative_to(root)}:{owner}")
        for child in ast.iter_child_nodes(node):
            visit(child, path, owner)

    for path in files:
        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), path, "<module>")
    return sorted(found)


def test_every_saved_model_load_is_the_one_way_in():
    """Every load is scanned first: only ``checking/savedmodel.load`` calls the loader."""
    uses = loader_uses(sorted(PACKAGE.rglob("*.py")))
    assert uses == [THE_WAY_IN], (
        "open SavedModels with exporter.checking.savedmodel.load (it scans first); found "
        f"loaders at: {uses}"
    )


def test_the_loader_check_sees_every_form(tmp_path):
    files = write_sources(tmp_path / "exporter", {
        "a.py": "import tensorflow as tf\ndef f(p):\n    return tf.saved_model.load(p)\n",
        "b.py": "from tensorflow.saved_model import load\n",
        "c.py": "import tensorflow_hub as hub\nLOAD = hub.load\n",
        "d.py": "import tensorflow as tf\ndef g(p):\n    tf.compat.v1.saved_model.loader.load(p)\n",
        "e.py": "import tensorflow as tf\ndef h(p):\n    return tf.saved_model.save(p)\n",
        "f.py": "def k(p):\n    return tf.lite.TFLiteConverter.from_saved_model(p)\n",
    })  # fmt: skip
    assert loader_uses(files, root=tmp_path) == [
        "exporter/a.py:f",
        "exporter/b.py:<module>",
        "exporter/c.py:<module>",
        "exporter/d.py:g",
        "exporter/f.py:k",
    ]


# -- functions short enough to read at once --------------------------------------------------

MAX_FUNCTION_LINES = 60
REASON = "# Long:"


def long_functions(files: list[Path], root: Path = PACKAGE.parent) -> list[str]:
    """``path:line name (N lines)`` for each function over the limit with no reason above it.

    The reason is a comment starting with ``# Long:`` on the line before the ``def`` (or its
    first decorator).
    """
    found = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            reason = first >= 2 and lines[first - 2].strip().startswith(REASON)
            if length > MAX_FUNCTION_LINES and not reason:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_long_function_without_a_reason():
    long = long_functions(sorted(PACKAGE.rglob("*.py")))
    assert not long, f"split these, or say why beside them ({REASON} ...):\n" + "\n".join(long)


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    text = f"def long():\n{body}\n\n# Long: a table.\ndef kept():\n{body}"
    files = write_sources(tmp_path / "exporter", {"a.py": text})
    assert long_functions(files, root=tmp_path) == [
        f"exporter/a.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]


def test_metadata_is_read_in_one_place():
    """``metadata.json`` is read by ``checking/savedmodel.metadata`` alone (card writes it)."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _dotted(node).endswith("spec.METADATA_FILE"):
                readers.append(str(path.relative_to(PACKAGE.parent)))
    # conformance names the file in its report; card.py writes it.
    assert sorted(set(readers)) == [
        "exporter/checking/conformance.py",
        "exporter/checking/savedmodel.py",
        "exporter/making/card.py",
    ], readers
    conformance = (PACKAGE / "checking" / "conformance.py").read_text(encoding="utf-8")
    assert "json.loads" not in conformance and "read_regular(self.path" not in conformance


def test_the_readme_and_the_module_stay_short():
    readme = (PACKAGE.parent / "README.md").read_text().splitlines()
    assert len(readme) <= 200, f"README.md is {len(readme)} lines; move details to docs/"
    module = (PACKAGE / "making" / "module.py").read_text().splitlines()
    assert len(module) <= 480, f"making/module.py is {len(module)} lines; split it by job"


# -- BUILD_NOTES.md: traps only --------------------------------------------------------------

# Issue 36: under 400 lines.
MAX_NOTES_LINES = 400
# An entry: ``- **Title** (versions, with at least one dotted number): ... Workaround: ...``.
TRAP = re.compile(r"- \*\*(?P<title>.+?)\*\* \((?P<versions>[^)]*)\)")
VERSION = re.compile(r"\b\d+\.\d+")


def notes_problems(text: str) -> list[str]:
    """What keeps ``text`` (BUILD_NOTES.md) from being a short list of traps.

    Each entry is a top-level ``- **`` bullet, up to the next one or the next heading. Its bold
    title is followed by the versions it was seen on in parentheses, and it says what is done
    about it after ``Workaround:``. Anything else under a heading (a diary, a table of
    figures) is not an entry and is reported too.
    """
    lines = text.splitlines()
    problems = [] if len(lines) < MAX_NOTES_LINES else [f"{len(lines)} lines"]
    entries, stray = [], []
    for number, line in enumerate(lines, 1):
        if line.startswith("- **"):
            entries.append((number, [line]))
        elif line.startswith("#"):
            entries.append((number, None))  # A heading ends the entry before it.
        elif line.startswith("  ") and entries and entries[-1][1] is not None:
            entries[-1][1].append(line)
        elif line.strip() and any(h.startswith("## ") for h in lines[: number - 1]):
            stray.append(number)
    entries = [(number, " ".join(" ".join(body).split())) for number, body in entries if body]
    if not entries:
        problems.append("no entries")
    for number, entry in entries:
        match = TRAP.match(entry)
        if not match or not VERSION.search(match["versions"]):
            problems.append(f"line {number}: no versions in parentheses after the title")
        if "Workaround:" not in entry:
            problems.append(f"line {number}: no Workaround:")
    problems += [f"line {number}: not part of an entry" for number in stray]
    return problems


def test_build_notes_are_short_and_every_trap_names_its_versions():
    problems = notes_problems((PACKAGE.parent / "BUILD_NOTES.md").read_text(encoding="utf-8"))
    assert not problems, "BUILD_NOTES.md holds traps only:\n" + "\n".join(problems)


def test_the_notes_check_sees_a_bad_entry():
    good = "- **A trap** (TF 2.21): what happens.\n  Workaround: what we do.\n"
    assert notes_problems(f"# Notes\n\nIntro.\n\n## Part\n\n{good}") == []
    assert notes_problems(
        "## Part\n\n"
        "- **No version** (always): x. Workaround: y.\n"
        "- **No parentheses**, TF 2.21: x. Workaround: y.\n"
        f"- **No workaround** (Keras 3.15): x.\n{good}\n"
        "We measured 3.2 s on Tuesday.\n"
    ) == [
        "line 3: no versions in parentheses after the title",
        "line 4: no versions in parentheses after the title",
        "line 5: no Workaround:",
        "line 9: not part of an entry",
    ]
    assert notes_problems(good * (MAX_NOTES_LINES // 2)) == [f"{MAX_NOTES_LINES} lines"]


# -- the quick tier ---------------------------------------------------------------------------

TESTS = PACKAGE.parent / "tests"
# What makes a test slow whatever it checks: the zoo's processes, a fresh virtual
# environment, a keras-hub preset through both CLIs (two fresh processes importing keras-hub).
HEAVY = {"zoo", "_fresh_venv", "_export_both"}


def _marks_slow(node: ast.AST) -> bool:
    """``@pytest.mark.slow``, or a parametrize over ``tiered(...)`` (all but one case slow)."""
    return _dotted(node).endswith("mark.slow") or any(
        isinstance(call, ast.Call) and _dotted(call.func) == "tiered" for call in ast.walk(node)
    )


def heavy_quick_tests(files: list[Path], root: Path = PACKAGE.parent) -> list[str]:
    """``path::test uses NAME`` for each test that uses a ``HEAVY`` name (calls it, or takes
    it as a fixture) and still runs in the quick tier (``-m "not slow and not stress"``)."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        module_marked = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and ("mark.slow" in ast.unparse(node.value) or "mark.stress" in ast.unparse(node.value))
            for node in tree.body
        )
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            if module_marked or any(_marks_slow(d) for d in node.decorator_list):
                continue
            used = {a.arg for a in node.args.args} | {
                n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            }
            found += [
                f"{path.relative_to(root)}::{node.name} uses {n}" for n in sorted(HEAVY & used)
            ]
    return found


def test_the_quick_tier_leaves_the_heavy_tests_out():
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) > 20
    heavy = heavy_quick_tests(files)
    assert not heavy, (
        "mark these @pytest.mark.slow, or parametrize them over conftest.tiered (docs/"
        "development.md):\n" + "\n".join(heavy)
    )


def test_the_quick_tier_check_sees_an_unmarked_heavy_test(tmp_path):
    files = write_sources(tmp_path / "tests", {
        "test_a.py": "def test_zoo(zoo):\n    pass\n"
                     "@pytest.mark.slow\ndef test_marked(zoo):\n    pass\n",
        "test_b.py": "def test_venv(tmp_path):\n    _fresh_venv(tmp_path)\n"
                     "@pytest.mark.parametrize('f', tiered(['a', 'b'], 'a'))\n"
                     "def test_tiered(f, tmp_path):\n    _export_both(f, tmp_path)\n",
        "test_c.py": "pytestmark = pytest.mark.stress\ndef test_s(zoo):\n    pass\n",
    })  # fmt: skip
    assert heavy_quick_tests(files, root=tmp_path) == [
        "tests/test_a.py::test_zoo uses zoo",
        "tests/test_b.py::test_venv uses _fresh_venv",
    ]
