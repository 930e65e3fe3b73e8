"""A lineage you can trust, through the real `dvc repro`: a tracking outage that costs one probe,
code deps that cannot go stale, byte-stable artifacts, and a bad value that costs nothing."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lottery import deps, hparams, mlflow_connection
from tests.blackhole import BlackHole
from tests.conftest import TINY, default_params, dvc_project, with_overrides

UP_TO_DATE = "Data and pipelines are up to date."
OUTPUTS = ("models", "metrics", "plots")


@dataclass
class Repro:
    repo: Path
    output: str  # `dvc repro`'s stdout and stderr, stage after stage, with each stage's import trace
    seconds: float
    probes: int  # connections the never-answering tracking server accepted


def run(repo, *args, tracking_uri=None, import_trace=False):
    """A command in `repo` with this venv on PATH; (exit status, stdout and stderr together)."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{repo / 'mlflow.db'}"
    if import_trace:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    done = subprocess.run(args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return done.returncode, done.stdout


def ok(repo, *args, **kwargs):
    code, output = run(repo, *args, **kwargs)
    assert code == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def repro(tmp_path_factory, mnist_root):
    """A tiny 1-round lineage reproduced while MLFLOW_TRACKING_URI points at a server that accepts
    connections and never answers; every stage's imports are traced (PYTHONPROFILEIMPORTTIME)."""
    overrides = {**TINY, "rounds": hparams.rounds_section(1), "data.source": "local", "data.local_root": str(mnist_root)}
    params = with_overrides(default_params(), overrides)
    repo = dvc_project(tmp_path_factory.mktemp("trust"), params)
    ok(repo, "git", "add", "-A")
    ok(repo, "git", "commit", "-qm", "tiny lineage")
    with BlackHole() as hole:
        try:
            start = time.monotonic()
            output = ok(repo, "dvc", "repro", tracking_uri=hole.url, import_trace=True)
            yield Repro(repo, output, time.monotonic() - start, hole.accepted)
        finally:
            mlflow_connection.forget_probe(hole.url)


def stage_imports(output):
    """{stage: files of the `lottery` modules its process imported}, from `dvc repro`'s output."""
    imported, stage = {}, None
    for line in output.splitlines():
        started = re.match(r"Running stage '([^']+)':", line)
        if started:
            stage = started.group(1)
            imported[stage] = set()
        traced = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(lottery[\w.]*)$", line)
        if stage and traced:
            imported[stage].update(str(f) for f in deps.module_files(traced.group(1).strip(), deps.ROOT))
    return imported


def stamped_code(repo):
    """{stage script: the files its stamp (models/code/<script>.json, written by `code`) covers}."""
    return {path.stem: set(json.loads(path.read_text())["files"]) for path in (repo / "models/code").glob("*.json")}


def scratch_copy(repo, tmp_path):
    """A copy of the repository to change, sharing its DVC cache (read-only use: `dvc status`)."""
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns("cache"))
    (copy / ".dvc" / "cache").symlink_to(repo / ".dvc" / "cache")
    return copy


def outputs_digest(repo):
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in OUTPUTS
        for path in sorted((repo / folder).rglob("*"))
        if path.is_file()
    }


def test_a_server_that_never_answers_costs_one_probe_for_the_whole_lineage(repro):
    assert repro.probes == 1  # one probe; every stage after it reused the answer
    assert (repro.repo / "metrics/summary.json").exists()
    warnings = [line for line in repro.output.splitlines() if line.startswith("warning: MLflow tracking unavailable")]
    logging_stages = {"init", "train", "prune@1", "evaluate@1", "compact@1", "report"}
    assert 1 <= len(warnings) <= len(logging_stages)
    assert all("`lottery sync` adds them later" in line for line in warnings)
    assert "Traceback" not in repro.output
    print(f"tiny lineage against a never-answering server: {repro.seconds:.1f} s, {repro.probes} probe")


def test_sync_fills_mlflow_in_once_the_store_is_back(repro):
    ok(repro.repo, sys.executable, "-m", "lottery", "sync")
    client = MlflowClient(f"sqlite:///{repro.repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lottery").experiment_id])
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags["lottery.kind"], []).append(run)
    assert len(by_kind["lineage"]) == 1 and len(by_kind["round"]) == 2
    for run in by_kind["round"]:
        metrics = json.loads((repro.repo / f"metrics/rounds/round_{run.data.tags['lottery.round']}.json").read_text())
        assert run.data.metrics["test_accuracy_at_early_stop"] == metrics["test_accuracy_at_early_stop"]
        assert run.info.status == "FINISHED"


def test_each_stage_imports_only_code_that_its_stamp_covers(repro):
    imported, stamped = stage_imports(repro.output), stamped_code(repro.repo)
    assert set(imported) == {
        "code", "validate", "data", "init", "train", "prune@1", "rewind@1", "retrain@1", "evaluate@1", "compact@1", "report"
    }  # fmt: skip
    for stage, files in imported.items():
        script = stage.split("@")[0]
        assert files, f"{stage}: no import trace"
        assert files <= stamped[script], f"{stage} imported {sorted(files - stamped[script])}, which its stamp lacks"
    assert "lottery/training.py" in imported["retrain@1"] and "lottery/training.py" not in imported["prune@1"]


@pytest.mark.parametrize("module", ["lottery/models/lenet.py", "lottery/training.py", "lottery/report.py"])
def test_editing_a_module_reruns_exactly_the_stages_that_import_it(repro, tmp_path, module):
    copy = scratch_copy(repro.repo, tmp_path)
    with open(copy / module, "a") as f:
        f.write("\n# edited\n")
    assert set(json.loads(ok(copy, "dvc", "status", "--json"))) == {"code"}  # the stamps are made from lottery/
    ok(copy, "dvc", "repro", "--single-item", "code")  # new stamps, where the code a stage runs changed
    changed = set(json.loads(ok(copy, "dvc", "status", "--json")))
    importers = {stage for stage, files in stage_imports(repro.output).items() if module in files} - {"code"}
    assert changed == importers
    if module == "lottery/models/lenet.py":  # the stages that build models, and only those: not `data`
        assert {"validate", "init", "train", "prune@1", "rewind@1", "retrain@1", "evaluate@1", "compact@1"} <= changed
        assert "data" not in changed
    if module == "lottery/report.py":
        assert changed == {"report"}


def test_a_forced_identical_rerun_leaves_every_later_stage_skipped(repro):
    before = outputs_digest(repro.repo)
    ok(repro.repo, "dvc", "repro", "--force", "--single-item", "init")
    ok(repro.repo, "dvc", "repro", "--force", "--single-item", "train")
    after = outputs_digest(repro.repo)
    assert after["models/init/init.pt"] == before["models/init/init.pt"]  # θ0 from the seed: same bytes
    assert after["models/round_0/trained.pt"] == before["models/round_0/trained.pt"]
    output = ok(repro.repo, "dvc", "repro")
    assert UP_TO_DATE in output and "Running stage" not in output


def test_a_rejected_value_costs_no_result(repro):
    params = repro.repo / "params.yaml"
    good = params.read_text()
    before = outputs_digest(repro.repo)
    params.write_text(re.sub(r"(?m)^  rate: 0\.2$", "  rate: 1.5", good, count=1))
    code, output = run(repro.repo, "dvc", "repro")
    assert code != 0
    ours = [line for line in output.splitlines() if line.startswith("error:")]
    assert ours == ["error: prune.rate = 1.5: must be in (0, 1)"] and "Traceback" not in output
    assert outputs_digest(repro.repo) == before  # DVC stopped at `validate`: nothing deleted
    params.write_text(good)
    output = ok(repro.repo, "dvc", "repro")
    assert UP_TO_DATE in output and "Running stage" not in output


def test_a_missing_input_is_one_line_naming_the_file(repro, tmp_path):
    copy = scratch_copy(repro.repo, tmp_path)
    (copy / "metrics/rounds/round_0.json").unlink()
    code, output = run(copy, sys.executable, "-m", "stages.report")
    assert code == 1
    assert output.strip().splitlines()[-1] == (
        "error: metrics/rounds/round_0.json: no such file (an earlier stage writes it: run `dvc repro`)"
    )
    assert "Traceback" not in output
