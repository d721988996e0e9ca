"""The shape of the package, read from its source: no import cycle (TYPE_CHECKING imports
included), a domain core that does not import the web framework, and adapters that import
the core rather than each other."""

from __future__ import annotations

import ast
from pathlib import Path

import service

PACKAGE = Path(service.__file__).resolve().parent
CORE = "service.chat"
ADAPTERS = ("service.ws", "service.api")
WEB = ("fastapi", "starlette", "uvicorn")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any level (function bodies and TYPE_CHECKING too)."""
    package = _module(path).rpartition(".")[0] or "service"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, *([base] if base else [])])
            found.add(base)
            # `from . import x` names modules too.
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}


def _external(name: str) -> set[str]:
    path = PACKAGE.parent / (name.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
    return {i.split(".")[0] for i in _imports(path)}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "service.store" in graph[CORE] and "service.hubs" in graph[CORE]
    assert "service.protocol" in graph["service.ws"]


def test_no_import_cycle() -> None:
    graph = _graph()
    for name in graph:
        for other in graph[name]:
            assert name not in _reachable(graph, other), f"{name} -> {other} -> ... -> {name}"


def test_the_core_does_not_import_the_web_framework() -> None:
    graph = _graph()
    for module in _reachable(graph, CORE):
        web = _external(module) & set(WEB)
        assert not web, f"{module} (reached from {CORE}) imports {web}"


def test_adapters_import_the_core_not_each_other() -> None:
    graph = _graph()
    for adapter in ADAPTERS:
        others = set(ADAPTERS) - {adapter}
        assert not others & _reachable(graph, adapter), f"{adapter} reaches {others}"
        assert CORE in graph[adapter], f"{adapter} does not use {CORE}"
