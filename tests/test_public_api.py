"""Layers talk through public names: the faces (server, workflows, cli) never use an underscore
attribute or import an underscore name of another layer, and no module outside the pipeline uses a
private name the pipeline defines (checked on the syntax tree of every module)."""
import ast
from pathlib import Path

import opensd

SRC = Path(opensd.__file__).parent
FACES = ("server", "workflows", "cli")


def _modules(*folders):
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if not folders or rel.parts[0] in folders:
            yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _package_of(rel: Path, node: ast.ImportFrom) -> str:
    """The top-level opensd package an import points into ('' for the root)."""
    if node.level == 0:
        parts = (node.module or "").split(".")
        return parts[1] if parts[0] == "opensd" and len(parts) > 1 else ""
    here = list(rel.parts[:-1])[: len(rel.parts) - node.level]
    target = here + (node.module.split(".") if node.module else [])
    return target[0] if target else ""


def test_faces_use_no_private_name_of_another_layer():
    found = []
    for rel, tree in _modules(*FACES):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and _package_of(rel, node) != rel.parts[0]:
                found += [f"{rel}:{node.lineno} import {a.name}" for a in node.names if _private(a.name)]
    assert not found, "faces reach into private names:\n" + "\n".join(found)


def _pipeline_privates() -> set[str]:
    """Underscore names the pipeline package defines: functions, classes, methods and attributes."""
    names = set()
    for _, tree in _modules("pipeline"):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return {n for n in names if _private(n)}


def test_nothing_outside_the_pipeline_uses_its_private_names():
    private = _pipeline_privates()
    found = []
    for rel, tree in _modules():
        if rel.parts[0] == "pipeline":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner in ("pipe", "pipeline") or node.attr in private and owner not in ("self", "cls"):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and _package_of(rel, node) == "pipeline":
                found += [f"{rel}:{node.lineno} import {a.name}" for a in node.names if _private(a.name)]
    assert not found, "\n".join(found)
