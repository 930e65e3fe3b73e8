"""`lottery lineage` and `lottery sync` over lineages run in-process into a SQLite MLflow store."""

import json
import os

import mlflow
import pytest
import torch

from lottery import cli, lineage, paths, pipeline, validation
from lottery.errors import ParamsError
from lottery.lineage_catalog import LineageCatalog, LineageError
from tests.conftest import TINY, lineages_in_one_store, with_overrides


@pytest.fixture(scope="module")
def two_lineages(tmp_path_factory, mnist_root):
    """Two lineages that differ in prune.rate alone, each run in a workspace of its own, into one
    MLflow store; built once for the module, as they take a while."""
    overrides = {rate: {**TINY, "prune.rate": rate} for rate in (0.2, 0.3)}
    with lineages_in_one_store(tmp_path_factory.mktemp("lineages"), mnist_root, overrides) as made:
        yield {rate: parent for rate, (parent, _) in made.items()}, made[0.3][1]


def catalog(hp):
    return LineageCatalog(mlflow.get_tracking_uri(), hp.tracking.experiment)


def run_cli(capsys, *argv):
    cli.main(list(argv))
    return capsys.readouterr().out


def test_mask_overlap_of_a_mask_with_itself_is_total():
    mask = {"w": torch.rand(20, 30) < 0.4}
    assert lineage.mask_overlap(mask, mask) == {"w": {"jaccard": 1.0, "hamming": 0.0}}
    other = {"w": ~mask["w"]}
    assert lineage.mask_overlap(mask, other) == {"w": {"jaccard": 0.0, "hamming": 1.0}}


def test_diff_of_a_lineage_with_itself_shows_no_difference(two_lineages, capsys):
    ids, hp = two_lineages
    result = lineage.diff(catalog(hp), catalog(hp).find(ids[0.2]), catalog(hp).find(ids[0.2]))
    assert not lineage.differs(result)
    assert result["params"] == {}
    assert all(layer["jaccard"] == 1.0 for r in result["rounds"] for layer in r["masks"].values())
    assert "no differences" in run_cli(capsys, "--params", str(paths_params(hp)), "lineage", "diff", ids[0.2], ids[0.2])


def paths_params(hp):
    """A params file for the CLI: the test's params, so it finds the test's experiment."""
    import yaml

    path = os.path.abspath("cli-params.yaml")
    with open(path, "w") as f:
        f.write(yaml.safe_dump(hp.raw))
    return path


def test_diff_of_lineages_that_differ_in_one_param(two_lineages, capsys):
    ids, hp = two_lineages
    result = lineage.diff(catalog(hp), catalog(hp).find(ids[0.2]), catalog(hp).find(ids[0.3]))
    assert result["params"] == {"prune.rate": {"a": "0.2", "b": "0.3"}}
    round_2 = result["rounds"][2]
    assert round_2["metrics"]["weights_remaining"]["delta"] == pytest.approx(0.49 - 0.64, abs=0.01)
    assert 0 < round_2["masks"]["layers.1.weight"]["jaccard"] < 1
    assert result["rounds"][0]["metrics"]["test_accuracy_at_early_stop"]["delta"] == 0  # the same dense round
    out = json.loads(run_cli(capsys, "--params", str(paths_params(hp)), "lineage", "diff", ids[0.2], ids[0.3], "--json"))
    assert out["differs"] is True and list(out["params"]) == ["prune.rate"]


def test_list_and_show(two_lineages, capsys):
    ids, hp = two_lineages
    rows = json.loads(run_cli(capsys, "--params", str(paths_params(hp)), "lineage", "list", "--json"))
    assert sorted(r["prune.rate"] for r in rows) == ["0.2", "0.3"]
    assert all(r["rounds"] == 2 for r in rows)
    shown = json.loads(run_cli(capsys, "--params", str(paths_params(hp)), "lineage", "show", ids[0.3][:12], "--json"))
    assert [r["round"] for r in shown["rounds"]] == [0, 1, 2]
    assert shown["rounds"][2]["weights_remaining"] == pytest.approx(0.49, abs=0.01)
    found = catalog(hp).find(ids[0.3])
    by_hash = catalog(hp).find(found.parent.data.tags["lottery.lineage"][:8])
    assert by_hash.parent.info.run_id == ids[0.3]
    with pytest.raises(LineageError, match="no lineage has that"):
        catalog(hp).find("nonexistent")


def test_an_unknown_lineage_is_a_one_line_error(two_lineages, capsys):
    _, hp = two_lineages
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--params", str(paths_params(hp)), "lineage", "show", "no-such-lineage"])
    assert str(exit_.value) == "error: 'no-such-lineage': no lineage has that run id, DVC experiment, run name or hash"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the params must ask for a GPU this machine lacks")
def test_list_show_and_diff_read_the_store_whatever_the_params_ask_of_the_machine(two_lineages, capsys, tmp_path):
    import yaml

    ids, hp = two_lineages
    on_cuda = tmp_path / "cuda-params.yaml"
    on_cuda.write_text(yaml.safe_dump(with_overrides(hp.raw, {"train.device": "cuda"})))
    with pytest.raises(ParamsError, match="train.device = 'cuda'"):
        validation.load(on_cuda)  # a stage would refuse these params here
    cli_args = ["--params", str(on_cuda), "lineage"]
    rows = json.loads(run_cli(capsys, *cli_args, "list", "--json"))
    assert sorted(r["prune.rate"] for r in rows) == ["0.2", "0.3"]
    shown = json.loads(run_cli(capsys, *cli_args, "show", ids[0.3], "--json"))
    assert [r["round"] for r in shown["rounds"]] == [0, 1, 2]
    assert json.loads(run_cli(capsys, *cli_args, "diff", ids[0.2], ids[0.3], "--json"))["differs"] is True
    no_tracking = tmp_path / "no-tracking.yaml"
    no_tracking.write_text(yaml.safe_dump({k: v for k, v in hp.raw.items() if k != "tracking"}))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--params", str(no_tracking), "lineage", "list"])
    assert str(exit_.value) == "error: tracking: missing section"


def test_sync_twice_creates_no_duplicates_and_backfills_after_an_outage(workdir, make_hp, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # down: nothing listens there
    hp = make_hp(**{"controls.run": ["reinit"]})
    pipeline.run_lineage(hp)
    assert paths.round_metrics(2, "reinit").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    pipeline.sync(hp)
    pipeline.sync(hp)
    runs = mlflow.search_runs(experiment_names=[hp.tracking.experiment], output_format="list")
    kinds = sorted(r.data.tags["lottery.kind"] for r in runs)
    assert kinds == ["control", "control", "lineage", "round", "round", "round"]
    for run in runs:
        if run.data.tags["lottery.kind"] != "lineage":
            assert "test_accuracy_at_early_stop" in run.data.metrics
            assert "mask.pt" in {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id)}
    history = mlflow.tracking.MlflowClient().get_metric_history(
        next(r.info.run_id for r in runs if r.data.tags.get("lottery.round") == "1" and r.data.tags["lottery.kind"] == "round"),
        "validation_loss",
    )
    assert [m.step for m in history] == [0, 20, 40, 60]
