"""Code deps that cannot go stale: each stage depends on a stamp of exactly the files its script can import."""

import json

import pytest

from lottery import deps
from lottery.errors import UserError
from tests.conftest import PROJECT

PACKAGE = {
    "lottery/__init__.py": "",
    "lottery/loop.py": "import torch\n\ndef run():\n    from lottery import helper  # lazy: still code the stage runs\n    return helper\n",
    "lottery/helper.py": "import os\n",
    "lottery/unused.py": "from lottery import loop\n",
    "lottery/registry/__init__.py": "REGISTRY = {}\nfrom lottery.registry import first  # noqa: E402\n",
    "lottery/registry/first.py": "from lottery.registry import REGISTRY\n",
    "stages/fit.py": "from lottery import loop, registry\nfrom lottery.loop import run\n",
    "stages/other.py": "from lottery import helper\n",
}


@pytest.fixture
def project(tmp_path):
    for name, text in PACKAGE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_closure_follows_lazy_imports_and_packages_but_not_the_unimported(project):
    assert deps.closure("stages/fit.py", root=project) == [
        "lottery/__init__.py",
        "lottery/helper.py",
        "lottery/loop.py",
        "lottery/registry/__init__.py",
        "lottery/registry/first.py",
        "stages/fit.py",
    ]
    assert deps.closure("stages/other.py", root=project) == ["lottery/__init__.py", "lottery/helper.py", "stages/other.py"]


def test_a_stamp_changes_exactly_when_the_code_its_script_runs_changes(project):
    deps.write_stamps(project / "stamps", project)
    before = {p.name: p.read_bytes() for p in (project / "stamps").iterdir()}
    assert sorted(before) == ["fit.json", "other.json"]
    assert list(json.loads(before["fit.json"])["files"]) == deps.closure("stages/fit.py", root=project)
    deps.write_stamps(project / "stamps", project)
    assert {p.name: p.read_bytes() for p in (project / "stamps").iterdir()} == before  # same code, same bytes
    (project / "lottery/loop.py").write_text("# edited\n")  # fit runs it, other does not
    deps.write_stamps(project / "stamps", project)
    after = {p.name: p.read_bytes() for p in (project / "stamps").iterdir()}
    assert after["fit.json"] != before["fit.json"] and after["other.json"] == before["other.json"]


def test_a_module_that_is_not_python_is_one_line_naming_it(project):
    (project / "lottery/helper.py").write_text("def broken(:\n")
    with pytest.raises(UserError, match=r"^.*lottery/helper.py:1: not valid Python \(.*\)$"):
        deps.write_stamps(project / "stamps", project)


def test_the_code_digest_changes_with_the_code_the_stages_run_only(project):
    before = deps.code_digest(project)
    (project / "lottery/unused.py").write_text("# edited\n")
    deps.code_digest.cache_clear()
    assert deps.code_digest(project) == before
    (project / "lottery/helper.py").write_text("# edited\n")
    deps.code_digest.cache_clear()
    assert deps.code_digest(project) != before


def test_every_stage_in_dvc_yaml_depends_on_its_scripts_stamp():
    from dvc.utils.serialize import parse_yaml

    stages = parse_yaml((PROJECT / "dvc.yaml").read_text(), "dvc.yaml")["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = body["cmd"].split()[2].removeprefix("stages.")
        assert (PROJECT / "stages" / f"{script}.py").is_file(), name
        if name == "code":
            assert body["deps"] == ["lottery", "stages"]
        else:
            assert body["deps"][0] == f"models/code/{script}.json", name
            assert name == "validate" or "models/params.validated" in body["deps"], name
