"""The package's three sides import each other only one way (read with ast, nothing imported).

Making never imports using; checking shares the contract (``exporter/spec.py``) with making
but none of its code; using reads an export through the contract and the checker, never the
code that made it; the contract imports none of the sides.
"""

import ast
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


def imported(path: Path, root: Path):
    """Yield (line, module) for every import in ``path``, at any depth in the file.

    ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a module
    (``from exporter import use``). Relative imports are resolved against ``path``.
    """
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def violations(files: list[Path], forbidden: tuple[str, ...], root: Path = PACKAGE.parent):
    """``path:line imports name`` for each forbidden import; ``root`` holds ``exporter/``."""
    found = []
    for path in files:
        for line, name in imported(path, root):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(found))


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
    side = tmp_path / "exporter" / "making"
    side.mkdir(parents=True)
    sources = {
        "a.py": "from exporter import use\n",
        "b.py": "import exporter.use.keras_layer\n",
        "c.py": "def f():\n    from exporter.use.embed import run\n",
        "d.py": "from .. import use\n",
        "e.py": "from exporter import spec, errors\nimport exporter.making.card\n",
    }
    for name, text in sources.items():
        (side / name).write_text(text)
    bad = violations(sorted(side.glob("*.py")), ("exporter.use",), root=tmp_path)
    assert sorted({entry.split(" imports ")[0] for entry in bad}) == [
        "exporter/making/a.py:1",
        "exporter/making/b.py:1",
        "exporter/making/c.py:2",
        "exporter/making/d.py:1",
    ]
