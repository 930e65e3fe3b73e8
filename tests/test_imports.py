"""No module of lottery/ can import itself through others: an import circle works only while its
imports stay in one order (a late import at the bottom of a package), and breaks when one moves.

"Can import" is lottery.deps's relation, the one the code stamps use: imports read from the AST at
any depth (inside functions too), with the `__init__.py` of each package on the way."""

import functools

from lottery import deps


@functools.cache
def circles(root=deps.ROOT):
    """Sorted pairs of lottery/ files (under `root`) each of which can import the other."""
    files = sorted(str(path.relative_to(root)) for path in (root / deps.PACKAGE).rglob("*.py"))
    reach = {file: set(deps.closure(file, root=root)) for file in files}
    return sorted({tuple(sorted((a, b))) for a in files for b in reach[a] if b != a and a in reach[b]})


def test_the_pruning_package_and_the_supermask_search_are_in_no_import_circle():
    inside = ("lottery/pruning/", "lottery/supermask.py")
    assert [pair for pair in circles() if any(file.startswith(inside) for file in pair)] == []


def test_lottery_has_no_import_circle():
    assert circles() == []


def test_an_import_inside_a_function_back_into_its_package_is_a_circle(tmp_path):
    package = tmp_path / deps.PACKAGE / "strategies"
    package.mkdir(parents=True)
    (tmp_path / deps.PACKAGE / "__init__.py").write_text("")
    (package / "__init__.py").write_text("REGISTRY = {}\n\nfrom lottery.strategies import magnitude  # noqa: E402\n")
    (package / "magnitude.py").write_text("def scores():\n    from lottery.strategies import REGISTRY\n")
    (package / "random.py").write_text("import torch\n")
    assert circles(tmp_path) == [("lottery/strategies/__init__.py", "lottery/strategies/magnitude.py")]
