"""The MLflow UI shows the lineage: a tiny real lineage (one round, the reinit control) published to
a SQLite store, a real `mlflow server` over that store, and its pages loaded in headless Chromium.

The parent run's page must show the round table from its description rendered as a table, the
artifacts tab the figure and the tables; every round's and control's run must carry the metrics
that a chart of accuracy against weights remaining needs. The README's line on the view toggle is
checked too: a fresh browser opens the experiment in the GenAI view, and the address it gives opens
the Model training view. Publishing the lineage again through the server logs nothing.
The browser tests skip only where no Chromium binary is found; the description's own tests, first,
need no browser.
"""

import re
import subprocess
from html.parser import HTMLParser

import pytest
from mlflow.tracking import MlflowClient

from lottery import hparams, mlflow_connection, mlflow_view, paths, pipeline, records, report, tracking, validation
from lottery.runs import CONTROL_TAG, KIND_TAG, ROUND_TAG, RunIndex
from lottery.io import read_json
from tests.conftest import TINY, default_params, store_view, with_overrides
from tests.test_plots_offline import chromium
from tests.test_tracking_fresh import artifact_files
from tests.test_tracking_server import mlflow_server

# The UI fetches runs, metrics and artifact lists after it loads; virtual time lets them arrive.
SETTLE = "--virtual-time-budget=20000"
# No connection leaves the machine (as in test_plots_offline), but the server on 127.0.0.1 answers:
# the proxy is bypassed for loopback addresses, and the one address left out of the "no host" rule.
NO_NETWORK = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
# Sidebar entries of each view of an experiment in MLflow 3.17.
GENAI_ONLY, TRAINING_ONLY = "Observability", "Model registry"


class Tables(HTMLParser):
    """The text of every <table> cell, as rows of cells, and all the page's text."""

    def __init__(self):
        super().__init__()
        self.tables, self.text = [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


# --- the description, without a browser ---------------------------------------------------------


def long_summary(rounds, controls=("reinit", "random_sparse", "reinit_from_ticket")):
    """The report's summary of a made-up lineage of `rounds` rounds and `controls`, one seed."""
    def metrics(round_, shift):
        return {"weights_remaining": 0.8**round_, "test_accuracy_at_early_stop": 0.98 - shift - 0.001 * round_,
                "early_stop_iteration": 3000 + 100 * round_, "final_test_accuracy": 0.97 - shift}  # fmt: skip

    measurements = {"ticket": {r: [metrics(r, 0)] for r in range(rounds + 1)}}
    for i, control in enumerate(controls):
        measurements[control] = {r: [metrics(r, 0.01 * (i + 1))] for r in range(1, rounds + 1)}
    return report.summarize(measurements, tolerance=0.005)


def compression(round_):
    side = {"parameters": 266_610, "flops": 532_400, "bytes": 1_069_333, "latency_ms_batch_1": 0.05, "latency_ms_batch_64": 0.25}
    return {"round": round_, "form": "sparse_file", "compact": side, "dense": side, "flops_speedup": 1.25,
            "measured_speedup_batch_1": 1.0, "measured_speedup_batch_64": 1.0, "latency_device": "cpu"}  # fmt: skip


def test_the_description_holds_every_round_with_the_ticket_first():
    text = mlflow_view.description(long_summary(15), [compression(r) for r in range(1, 16)])
    # Accuracy falls 0.1 pp a round: round 5 is the last within 0.5 pp of dense.
    assert text.startswith("**Smallest matching ticket:** round 5, 32.8% of the weights, 97.50% (within 0.5 pp of dense's 98.00%")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| round | weights remaining | ticket acc. | ticket stop | ticket final | reinit acc. |")
    assert [row.split(" | ")[1] for row in table[1:17]] == [mlflow_view.weights(0.8**r) for r in range(16)]
    assert table[1].endswith("| 98.00% | 3,000 | 97.00% |  |  |  |  |  |  |  |  |  | (dense) |")
    assert table[17].startswith("| round | form | params |") and len(table) == 17 + 1 + 15  # the header, then 15 rows
    assert len(text) <= mlflow_view.DESCRIPTION_LIMIT


def test_a_description_over_mlflows_limit_is_cut_after_a_whole_row_and_says_so():
    text = mlflow_view.description(long_summary(80), [compression(r) for r in range(1, 81)])
    assert len(text) <= mlflow_view.DESCRIPTION_LIMIT
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| round")]
    left = int(re.search(r"\((\d+) more rows in the artifacts\)", text).group(1))
    assert len(rows) + left == 81 and left > 0
    assert [row.split(" | ")[0] for row in rows] == [f"| {r}" for r in range(len(rows))]
    assert "| round | form |" not in text  # no room left for the compression table
    assert text.endswith(mlflow_view.ARTIFACTS_LINE) and mlflow_view.LEGEND in text  # prose is kept whole


def test_weights_below_one_percent_keep_two_significant_digits():
    shown = [mlflow_view.weights(f) for f in (1.0, 0.169, 0.0359, 0.0042, 0.00048)]
    assert shown == ["100.0%", "16.9%", "3.6%", "0.42%", "0.048%"]


def test_a_long_description_is_stored_whole_and_published_once(workdir, make_hp):
    """MLflow cuts a tag value over its limit; then the held value would differ from ours forever."""
    hp, text = make_hp(), mlflow_view.description(long_summary(80), [compression(r) for r in range(1, 81)])
    record = records.Record(records.LINEAGE, tags={mlflow_view.DESCRIPTION_TAG: text})
    tracking.publish(hp, record)
    index = RunIndex(hp, mlflow_connection.tracking_uri(hp.tracking))
    run = index.client.get_run(index.run_id(records.LINEAGE, create=False))
    assert run.data.tags[mlflow_view.DESCRIPTION_TAG] == text
    tracking.publish(hp, record)
    assert index.client.get_run(run.info.run_id).data.tags == run.data.tags  # nothing re-logged, not even a tag


# --- the UI, in a browser ---------------------------------------------------------------------------


def parsed(dom):
    page = Tables()
    page.feed(dom)
    return page.tables, " ".join(" ".join(page.text).split())


UI_LINEAGE = {**TINY, "controls.run": ["reinit"], "rounds": hparams.rounds_section(1)}


@pytest.fixture(scope="module")
def served(tmp_path_factory, mnist_root):
    """The lineage's folder and params, its store served by `mlflow server`, a client of the server,
    the experiment and the runs by (kind, round, control); the working directory is the folder."""
    browser = chromium()
    base = tmp_path_factory.mktemp("ui")
    (base / "data").mkdir()
    (base / "data" / "mnist").symlink_to(mnist_root)
    hp = validation.from_dict(with_overrides(default_params(), UI_LINEAGE))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        pipeline.run_lineage(hp)
        with mlflow_server(f"sqlite:///{base / 'mlflow.db'}", base) as server:
            client = MlflowClient(server.url)
            experiment = client.get_experiment_by_name(hp.tracking.experiment)
            yield {
                "browser": browser, "base": base, "hp": hp, "patch": patch, "server": server, "client": client,
                "experiment": experiment, "runs": by_branch(client.search_runs([experiment.experiment_id])),
            }  # fmt: skip


def by_branch(runs):
    tags = (KIND_TAG, ROUND_TAG, CONTROL_TAG)
    return {tuple(run.data.tags.get(tag) for tag in tags): run for run in runs}


def page(served, route, profile):
    """The DOM of the UI at `route` (after '#/'), loaded in a fresh browser profile."""
    command = [served["browser"], "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    command += [*NO_NETWORK, SETTLE, "--dump-dom", f"{served['server'].url}/#/{route}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def parent_route(served, tab=""):
    parent = served["runs"][("lineage", None, None)]
    return f"experiments/{served['experiment'].experiment_id}/runs/{parent.info.run_id}{tab}"


def expected_rows(summary):
    """The round table's rows as the description should show them, from the summary's numbers."""
    rows = []
    for r in summary["rounds"]:
        cells = [str(r["round"]), f"{100 * r['weights_remaining']:.1f}%"]
        for branch in ("ticket", "reinit"):
            found = {metric: stats["mean"] for metric, stats in r.get(branch, {}).items()}
            shown = (
                f"{100 * found['test_accuracy_at_early_stop']:.2f}%",
                f"{found['early_stop_iteration']:,.0f}",
                f"{100 * found['final_test_accuracy']:.2f}%",
            ) if found else ("", "", "")  # fmt: skip
            cells += shown
        cells.append({True: "yes", False: "no"}.get(r.get("winning_ticket"), "(dense)"))
        rows.append(cells)
    return rows


def test_the_parent_runs_page_shows_the_round_table_in_the_training_view(served, tmp_path):
    dom = page(served, f"{parent_route(served)}?{mlflow_view.TRAINING_VIEW_QUERY}", tmp_path / "profile")
    tables, text = parsed(dom)
    summary = read_json(served["base"] / paths.summary())
    headers = ["round", "weights remaining"] + [f"{b} {h}" for b in ("ticket", "reinit") for h in ("acc.", "stop", "final")]
    (rounds,) = [t for t in tables if t and t[0][:2] == ["round", "weights remaining"]]  # rendered, not raw Markdown
    assert rounds[0] == headers + ["winning ticket"]
    assert rounds[1:] == expected_rows(summary)
    assert "|---" not in text
    (compression,) = [t for t in tables if t and t[0][:2] == ["round", "form"]]
    first = read_json(served["base"] / paths.compression_report(1))
    parameters = f"{first['compact']['parameters']:,} / {first['dense']['parameters']:,}"
    assert compression[1][:3] == ["1", first["form"], parameters]
    assert "Smallest matching ticket" in text or "No pruned round is within" in text
    assert TRAINING_ONLY in text and GENAI_ONLY not in text


def test_a_fresh_browser_opens_the_experiment_in_the_genai_view(served, tmp_path):
    """What the README says of MLflow 3.17: no experiment tag changes this, the toggle or the address does."""
    dom = page(served, f"experiments/{served['experiment'].experiment_id}", tmp_path / "profile")
    _, text = parsed(dom)
    assert GENAI_ONLY in text and TRAINING_ONLY not in text


def test_the_artifacts_tab_lists_the_figure_and_the_tables(served, tmp_path):
    dom = page(served, f"{parent_route(served, '/artifacts')}?{mlflow_view.TRAINING_VIEW_QUERY}", tmp_path / "profile")
    _, text = parsed(dom)
    shown = set(re.findall(r"\b[\w.]+\.(?:png|csv|json|yaml)\b", text))
    assert {"lottery.png", "compression.csv", "rounds.csv", "summary.json", "params.yaml"} <= shown


def test_every_branch_run_holds_what_a_chart_of_accuracy_against_weights_needs(served):
    branch_runs = {key: run for key, run in served["runs"].items() if key[0] != "lineage"}
    assert sorted(branch_runs, key=str) == [("control", "1", "reinit"), ("round", "0", None), ("round", "1", None)]
    for (_, round_, control), run in branch_runs.items():
        metrics = read_json(served["base"] / paths.round_metrics(int(round_), control))
        held = run.data.metrics
        assert held["test_accuracy_at_early_stop"] == metrics["test_accuracy_at_early_stop"]
        assert held[mlflow_view.PERCENT_METRIC] == pytest.approx(100 * metrics["weights_remaining"])
    # The parent run plots the same per round (step = round) in its Model metrics tab.
    parent = served["runs"][("lineage", None, None)].info.run_id
    history = served["client"].get_metric_history(parent, "ticket.test_accuracy_at_early_stop")
    by_round = sorted((int(key[1]), run.data.metrics) for key, run in branch_runs.items() if key[2] is None)
    assert sorted((m.step, m.value) for m in history) == [(r, held["test_accuracy_at_early_stop"]) for r, held in by_round]


def test_publishing_again_through_the_server_logs_nothing(served):
    """Last: it syncs into the served store (which the pages above only read)."""
    served["patch"].setenv("MLFLOW_TRACKING_URI", served["server"].url)
    mlflow_connection.forget_probe(served["server"].url)
    hp, client, experiment = served["hp"], served["client"], served["experiment"]
    before, uploaded = store_view(served["server"].url, hp.tracking.experiment), artifact_files(served["base"])
    pipeline.sync(hp)
    assert store_view(served["server"].url, hp.tracking.experiment) == before
    assert artifact_files(served["base"]) == uploaded
    now = by_branch(client.search_runs([experiment.experiment_id]))
    assert {key: run.data.tags for key, run in now.items()} == {key: run.data.tags for key, run in served["runs"].items()}
    description = now[("lineage", None, None)].data.tags[mlflow_view.DESCRIPTION_TAG]
    assert description == records.reported(hp).tags[mlflow_view.DESCRIPTION_TAG]  # whole, as built
