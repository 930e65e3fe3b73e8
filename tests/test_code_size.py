"""The library stays readable in pieces: no module of lottery/ over 400 lines, no class over 120,
no function over 60 (issue 23's limits; a docstring counts, as it is read too)."""

import ast

from lottery import deps

LIMITS = {"module": 400, "class": 120, "function": 60}
KINDS = {ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}


def oversized(root=deps.ROOT):
    """'kind path:name lines' of every piece of lottery/ over its limit."""
    found = []
    for path in sorted((root / deps.PACKAGE).rglob("*.py")):
        source = path.read_text()
        name = str(path.relative_to(root))
        if len(source.splitlines()) > LIMITS["module"]:
            found.append(f"module {name} {len(source.splitlines())}")
        for node in ast.walk(ast.parse(source)):
            kind = KINDS.get(type(node))
            if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                found.append(f"{kind} {name}:{node.name} {node.end_lineno - node.lineno + 1}")
    return found


def test_no_module_class_or_function_of_lottery_is_over_its_limit():
    assert oversized() == []


def test_the_limits_are_measured_as_lines_from_definition_to_end(tmp_path):
    package = tmp_path / deps.PACKAGE
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (package / "long.py").write_text(f"def long():\n{body}\n\nclass Fits:\n    pass\n")
    assert oversized(tmp_path) == ["function lottery/long.py:long 61"]
