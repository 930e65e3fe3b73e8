"""The real `dvc repro` and `dvc exp run` in a fresh git repository, on a small real-MNIST run."""

import json
import os
import shlex
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import PROJECT, TINY, default_params, dvc_project, empty_store, sh, with_overrides

# metrics/headline.json, in the order `dvc exp show` shows it (lottery.report.headline).
HEADLINE = ("dense_acc", "match_weights", "match_acc", "last_round", "last_weights", "last_acc", "verdict")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mnist_root):
    params = with_overrides(
        default_params(),
        {**TINY, "data.source": "local", "data.local_root": str(mnist_root), "controls.run": ["reinit"]},
    )
    repo = dvc_project(tmp_path_factory.mktemp("project"), params)
    empty_store(repo)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    sh(repo, "dvc", "repro")
    yield repo
    del os.environ["MLFLOW_TRACKING_URI"]


def lineages():
    runs = mlflow.search_runs(experiment_names=["lottery"], output_format="list")
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("lottery.kind") == "lineage"}
    children = {pid: sorted(int(r.data.tags["lottery.round"]) for r in runs if r.data.tags.get("mlflow.parentRunId") == pid) for pid in parents}
    return parents, children


def test_repro_writes_every_rounds_artifacts(repo):
    for round_ in range(3):
        assert (repo / f"models/round_{round_}/trained.pt").stat().st_size > 100_000
        assert (repo / f"models/round_{round_}/mask.pt").exists()
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][2]["weights_remaining"] == pytest.approx(0.64, abs=0.01)
    assert (repo / "plots/lottery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (repo / "plots/rounds.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("round,weights_remaining")


def test_dvc_declares_the_headline_and_shows_every_rounds_metrics_on_request(repo):
    declared = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))[""]["data"]
    assert list(declared) == ["metrics/headline.json"]
    assert list(declared["metrics/headline.json"]["data"]) == list(HEADLINE)
    per_round = ("metrics/rounds", "metrics/compression", "metrics/summary.json")
    metrics = json.loads(sh(repo, "dvc", "metrics", "show", "--json", *per_round))[""]["data"]
    round_2 = metrics["metrics/rounds/round_2.json"]["data"]
    assert round_2["round"] == 2
    assert metrics["metrics/rounds/round_2_reinit.json"]["data"]["weights_remaining"] == round_2["weights_remaining"]
    assert 0.5 < round_2["final_test_accuracy"] <= 1
    assert metrics["metrics/compression/round_2.json"]["data"]["round"] == 2
    assert declared["metrics/headline.json"]["data"]["last_acc"] == round_2["test_accuracy_at_early_stop"]
    assert "metrics/summary.json" in metrics


def test_dvc_graph_chains_the_rounds(repo):
    dot = sh(repo, "dvc", "dag", "--dot").replace('"', "")
    edges = {tuple(line.strip(" \t;").split(" -> ")) for line in dot.splitlines() if " -> " in line}
    for edge in [
        ("train", "prune@1"),
        ("prune@1", "rewind@1"),
        ("retrain@1", "prune@2"),
        ("evaluate@2", "report"),
        ("prune@2", "control@2-reinit"),
        ("control@2-reinit", "report"),
    ]:
        assert edge in edges


def test_mlflow_has_one_parent_and_a_child_per_round(repo):
    parents, children = lineages()
    assert len(parents) == 1
    (parent_id,) = parents
    assert children[parent_id] == [0, 1, 2]
    lineage_file = json.loads((repo / "models/lineage.json").read_text())
    assert lineage_file["parent_run_id"] == parent_id


def test_second_repro_is_a_no_op(repo):
    out = sh(repo, "dvc", "repro")
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_an_experiment_with_another_rate_is_a_new_lineage(repo):
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    sh(repo, "dvc", "exp", "run", "-S", "prune.rate=0.3", "--name", "rate-0.3")
    table = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    names = {exp.get("name") for entry in table for exp in (entry.get("experiments") or []) for exp in [exp]}
    names |= {rev.get("name") for entry in table for exp in (entry.get("experiments") or []) for rev in exp.get("revs", [])}
    assert "rate-0.3" in names
    parents, children = lineages()
    assert len(parents) == 2
    new = [p for p in parents.values() if p.data.params["prune.rate"] == "0.3"]
    assert len(new) == 1 and new[0].data.tags["lottery.dvc_experiment"] == "rate-0.3"
    assert children[new[0].info.run_id] == [0, 1, 2]  # round 0 restored from cache, filled in by report


def test_a_lineage_is_reproduced_from_its_commit_and_params(repo):
    # Without the suite's MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false: the command silences MLflow itself.
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    command = [sys.executable, "-m", "lottery", "lineage", "reproduce", "rate-0.3", "--json"]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no progress bar, no warning
    result = json.loads(done.stdout)
    assert result["match"] is True
    checked = {(c["round"], c["what"]) for c in result["checks"]}
    assert {(2, "mask_sha256"), (2, "test_accuracy_at_early_stop"), (0, "early_stop_iteration")} <= checked
    assert "lottery-reproduce-" not in sh(repo, "git", "worktree", "list")  # removed after the run


def test_lineage_diff_between_the_baseline_and_the_experiment(repo):
    out = json.loads(sh(repo, sys.executable, "-m", "lottery", "lineage", "diff", "rate-0.3", "rate-0.3", "--json"))
    assert out["differs"] is False
    rows = json.loads(sh(repo, sys.executable, "-m", "lottery", "lineage", "list", "--json"))
    baseline = next(r["parent_run_id"] for r in rows if r["prune.rate"] == "0.2")
    out = json.loads(sh(repo, sys.executable, "-m", "lottery", "lineage", "diff", baseline, "rate-0.3", "--json"))
    assert list(out["params"]) == ["prune.rate"]
    assert out["rounds"][1]["masks"]["layers.1.weight"]["jaccard"] < 1


def readme_command(start):
    """The README's command line that begins with `start`, as argv (its comment left off)."""
    for line in (PROJECT / "README.md").read_text().splitlines():
        if line.startswith(start):
            return shlex.split(line, comments=True)
    raise AssertionError(f"README.md has no line that begins with {start!r}")


def shown_rows(table):
    """Every row of `dvc exp show --json` (the workspace, the commit, its experiments): (name,
    flat params, headline metrics)."""
    revs = [entry for entry in table] + [rev for entry in table for exp in entry.get("experiments") or [] for rev in exp["revs"]]
    rows = []
    for rev in revs:
        data = rev["data"]
        headline = data["metrics"].get("metrics/headline.json", {}).get("data", {})
        rows.append((rev.get("name") or rev["rev"], flat(data["params"]["params.yaml"]["data"]), headline))
    return rows


def flat(tree, prefix=""):
    found = {}
    for key, value in tree.items():
        found.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return found


def test_dvc_exp_show_as_the_readme_tells_it_fits_200_columns_with_the_differing_params_and_the_headline(repo):
    sh(repo, "git", "add", "-A")  # the workspace as it is: `dvc exp show` shows the experiments of HEAD
    sh(repo, "git", "commit", "-qm", "before the experiments to show", "--allow-empty")
    # Two experiments that rerun only cheap stages (validate and report; compact), and a third
    # with a round more (`make rounds`), whose params gain `rounds.3.prev`, a column left out.
    sh(repo, "dvc", "exp", "run", "-S", "report.tolerance=0.02", "--name", "tolerance-0.02")
    sh(repo, "dvc", "exp", "run", "-S", "compact.latency_repeats=3", "--name", "repeats-3")
    sh(repo, sys.executable, "-m", "lottery", "rounds", "3")
    sh(repo, "dvc", "exp", "run", "--name", "rounds-3")
    command = readme_command("dvc exp show")
    lines = sh(repo, *command).splitlines()
    assert lines and max(map(len, lines)) <= 200, "\n".join(lines)
    header = [cell.strip() for cell in lines[0].strip("| ").split("|")]
    rows = shown_rows(json.loads(sh(repo, "dvc", "exp", "show", "--json")))
    shown = ("tolerance-0.02", "repeats-3", "rounds-3")
    assert set(shown) <= {name for name, _, _ in rows}
    differing = {key for key in set().union(*(params for _, params, _ in rows)) if len({repr(p.get(key)) for _, p, _ in rows}) > 1}
    assert differing == {"report.tolerance", "compact.latency_repeats", "rounds.3.prev"}
    # The headline first, every column of it even where all rows agree (dense accuracy), then the
    # params that differ but the rounds (the headline has the last round); no dependency hashes.
    assert header[0] == "Experiment" and header[1:8] == list(HEADLINE)
    assert sorted(header[8:]) == ["compact.latency_repeats", "report.tolerance"]
    body = [line.split("|") for line in lines[2:] if line.startswith("|")]
    cells = {cell[1].strip().split("[")[-1].rstrip("]"): cell[2:9] for cell in body}
    assert [cells[name][3].strip() for name in shown] == ["2", "2", "3"]
    for name, _, headline in rows:
        if name in shown:
            row = [cell.strip() for cell in cells[name]]
            assert row[-1] == headline["verdict"]
            for cell, key in zip(row, HEADLINE[:-1]):
                assert cell == "-" if headline.get(key) is None else float(cell) == pytest.approx(headline[key], abs=1e-5)
