"""The rooms of app/ keep to their rules (docs/architecture.md): only app/db/ runs SQL, the
lower rooms never import the higher ones, and app/api/ never imports app/db/ (it reaches
the database through the domain's unit of work and operations)."""

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

# SQL keywords that open a statement, as the code writes them (upper case), and NOTIFY.
_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP)\s|pg_notify\(")
# SQLAlchemy's statement builders: building a statement is running SQL.
_BUILDERS = {
    "text",
    "select",
    "insert",
    "update",
    "delete",
    "func",
    "bindparam",
    "literal_column",
    "column",
    "table",
}
# The rooms each room may import (itself always).
ALLOWED_ROOMS = {
    "settings": set(),
    "observability": {"settings"},
    "db": {"settings"},
    "domain": {"db"},
    "realtime": {"db", "domain", "observability", "settings"},
    "push": {"db", "observability", "settings"},
    "background": {"db", "domain", "observability", "push", "settings"},
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(APP.parent)), ast.parse(path.read_text(), str(path)))
        for path in sorted(APP.rglob("*.py"))
    ]


def _imports(tree: ast.Module) -> list[str]:
    """Every ``app.x.y[.name]`` imported, at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _room(path_or_module: str) -> str:
    parts = path_or_module.replace("/", ".").removesuffix(".py").split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_only_db_runs_sql():
    found = []
    for path, tree in _modules():
        if path.startswith("app/db/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _SQL.search(node.value):
                    found.append(f"{path}:{node.lineno}: SQL text {node.value.strip()[:40]!r}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                built = {alias.name for alias in node.names} & _BUILDERS
                if built or (node.module or "").startswith("sqlalchemy.dialects"):
                    found.append(f"{path}:{node.lineno}: builds SQL ({node.module})")
    assert not found, "SQL outside app/db/:\n" + "\n".join(found)


def test_api_never_imports_db():
    found = []
    for path, tree in _modules():
        if path.startswith("app/api/"):
            found += [f"{path} imports {name}" for name in _imports(tree) if _room(name) == "db"]
    assert not found, "app/api/ imports app/db/:\n" + "\n".join(found)


def test_lower_rooms_never_import_higher_ones():
    wrong = []
    for path, tree in _modules():
        room = _room(path)
        if room not in ALLOWED_ROOMS:
            continue
        for name in _imports(tree):
            if not name.startswith("app."):
                continue
            target = _room(name)
            if target != room and target not in ALLOWED_ROOMS[room]:
                wrong.append(f"{path} imports {name}")
    assert not wrong, "imports against the rooms' order:\n" + "\n".join(wrong)
