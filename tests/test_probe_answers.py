"""The tracking probe's kept answers (lottery/mlflow_connection.py) are a cache: an answer that cannot be
kept costs a stage nothing. (That each user keeps them in a folder of their own:
tests/test_two_users.py.)"""

from lottery import mlflow_connection, tracking
from tests.test_tracking_server import free_port


def test_an_answer_that_cannot_be_kept_costs_the_stage_nothing(tmp_path, monkeypatch, make_hp, capsys):
    """A probe folder this process cannot write (here: under a file): the stage still gets its
    answer, and tracking gives up with its one warning line instead of raising."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(mlflow_connection, "PROBE_DIR", tmp_path / "a-file" / "probes")
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there: 'unreachable' at once
    assert mlflow_connection.probe(uri)[0] is False
    hp = make_hp(**{"tracking.uri": uri})
    assert tracking.run_ids(hp) == {"parent_run_id": None, "round_run_ids": {}}
    assert capsys.readouterr().err.startswith("warning: MLflow tracking unavailable")
