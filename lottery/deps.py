"""The code each DVC stage runs, found from its script's imports.

A stage's code is its script (`stages/<name>.py`, run as `python -m stages.<name>`) and every
`lottery` module that script can import: imports at any depth, inside functions too (a lazy import
still runs), with the `__init__.py` of each package on the way.

The `code` stage depends on the whole `lottery/` and `stages/` folders and writes one stamp per
stage script, `models/code/<name>.json`: the sha256 of each file of that script's code. Every
other stage depends on its own stamp, whose bytes change exactly when a file it can import
changes, so an edited module reruns exactly the stages that can run it. (Listing the files in
dvc.yaml instead would do the same, but makes dvc.lock about 3 times larger and DVC reads it on
every command: a no-op `dvc repro` took 5.5 s that way.)

The union over all stage scripts is the pipeline's code; its digest is half of a lineage's name
(lottery.provenance).
"""

import ast
import functools
import hashlib
import json
from pathlib import Path

from lottery.errors import UserError
from lottery.io import write_json

PACKAGE = "lottery"
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = "stages"


def closure(*scripts, root=ROOT):
    """The files the `scripts` (relative to `root`) run: themselves and every package module they
    can import."""
    files, queue = set(), [Path(script) for script in scripts]
    while queue:
        path = queue.pop()
        if path in files:
            continue
        files.add(path)
        for module in _imported_modules(root / path):
            queue += [file for file in module_files(module, root) if file not in files]
    return sorted(str(path) for path in files)


def stage_scripts(root=ROOT):
    return sorted(str(path.relative_to(root)) for path in (root / SCRIPTS).glob("*.py"))


def stamp(*scripts, root=ROOT):
    """{file: sha256} of the code the `scripts` run."""
    return {file: hashlib.sha256((root / file).read_bytes()).hexdigest() for file in closure(*scripts, root=root)}


def write_stamps(folder, root=ROOT):
    """One stamp per stage script, `<folder>/<name>.json`; the same code gives the same bytes."""
    for script in stage_scripts(root):
        write_json(Path(folder) / f"{Path(script).stem}.json", {"script": script, "files": stamp(script, root=root)})


@functools.cache
def code_digest(root=ROOT):
    """sha256 (16 hex digits) of every file any stage runs: paths and bytes."""
    files = stamp(*stage_scripts(root), root=root)
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def _imported_modules(path):
    """Dotted names of the package modules imported anywhere in `path`."""
    try:
        return _imports_in(path.read_text())
    except SyntaxError as err:
        raise UserError(f"{path}:{err.lineno}: not valid Python ({err.msg})") from None


@functools.lru_cache(maxsize=None)
def _imports_in(source):
    # Keyed by the source text: every script's closure walks the same modules, so each is parsed
    # once per process, and an edited file is parsed again.
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lottery import data` imports the module lottery.data; `from lottery.x import f`
            # imports lottery.x: both candidates are kept and module_files drops non-modules.
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(name for name in names if name == PACKAGE or name.startswith(f"{PACKAGE}."))


def module_files(module, root=ROOT):
    """The file of `module` and the `__init__.py` of each package above it ([] if not a module)."""
    parts = module.split(".")
    files = []
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base.relative_to(root) / "__init__.py")
        elif base.with_suffix(".py").is_file() and depth == len(parts):
            files.append(base.with_suffix(".py").relative_to(root))
        else:
            return [] if depth == len(parts) else files
    return files
