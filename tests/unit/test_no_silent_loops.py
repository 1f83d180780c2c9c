"""No loop in shmserve swallows every exception without a word (log it, or catch what is expected)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "shmserve"
BROAD = {"Exception", "BaseException"}


def _silent_broad_handlers(tree: ast.AST) -> list[int]:
    lines = []
    for loop in ast.walk(tree):
        if not isinstance(loop, (ast.For, ast.AsyncFor, ast.While)):
            continue
        for node in ast.walk(loop):
            if not isinstance(node, ast.ExceptHandler):
                continue
            broad = node.type is None or (isinstance(node.type, ast.Name) and node.type.id in BROAD)
            silent = all(isinstance(stmt, (ast.Pass, ast.Continue)) for stmt in node.body)
            if broad and silent:
                lines.append(node.lineno)
    return lines


def test_no_loop_swallows_every_exception_silently() -> None:
    found = {str(p.relative_to(ROOT.parent)): lines for p in sorted(ROOT.rglob("*.py"))
             if (lines := _silent_broad_handlers(ast.parse(p.read_text())))}
    assert found == {}


def test_the_check_sees_a_silent_loop() -> None:
    src = "for h in hooks:\n    try:\n        h()\n    except Exception:\n        pass\n"
    assert _silent_broad_handlers(ast.parse(src)) == [4]
    assert _silent_broad_handlers(ast.parse(src.replace("pass", "log.exception('x')"))) == []
    assert _silent_broad_handlers(ast.parse(src.replace("Exception", "OSError"))) == []
