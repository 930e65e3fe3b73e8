"""`lottery compare` on real lineages of two methods (IMP with its random_sparse control, and
factorized layers) and two seeds each, run in-process into one SQLite MLflow store; and the
figures' percent axes and bands."""

import io
import json
import math
import statistics

import matplotlib.image
import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lottery import cli, compare, report, terminal
from lottery.lineage_catalog import LineageCatalog
from tests.conftest import TINY, lineages_in_one_store

METHODS = {
    "imp": {"controls.run": ["random_sparse"]},
    "factorized": {"factorize.enabled": True, "controls.run": []},
}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def lineages(tmp_path_factory, mnist_root):
    """{(method, seed): parent run id} of four tiny lineages in one store, and their params; built
    once for the module, each in a workspace of its own."""
    root = tmp_path_factory.mktemp("compare")
    overrides = {
        (method, seed): {**TINY, "weight_agnostic.values": [], "compact.latency_repeats": 2, "seed": seed, **changes}
        for method, changes in METHODS.items()
        for seed in SEEDS
    }
    with lineages_in_one_store(root, mnist_root, overrides) as made:
        hp = made[list(made)[-1]][1]
        params = root / "cli-params.yaml"
        params.write_text(yaml.safe_dump(hp.raw))
        yield {key: parent for key, (parent, _) in made.items()}, hp, params


def catalog(hp):
    return LineageCatalog(mlflow.get_tracking_uri(), hp.tracking.experiment)


def recorded(parent_id, round_, control=None):
    """A branch's metrics as MLflow holds them, found by its tags alone."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    condition = f"tags.`lottery.lineage` = '{parent.data.tags['lottery.lineage']}' and tags.`lottery.round` = '{round_}'"
    runs = client.search_runs([parent.info.experiment_id], filter_string=condition)
    (run,) = [r for r in runs if r.data.tags.get("lottery.control") == control]
    return run.data.metrics


def group_of(ids, method):
    return MlflowClient().get_run(ids[method, 0]).data.tags["lottery.replicate_group"]


@pytest.fixture(scope="module")
def result(lineages):
    """IMP and its random_sparse control named by their replicate group, factorized by one seed's
    run id standing for its group (all_seeds)."""
    ids, hp, _ = lineages
    imp = group_of(ids, "imp")[:10]
    specs = [f"IMP={imp}", f"random_sparse={imp}:random_sparse", f"factorized={ids['factorized', 0]}"]
    return compare.compare(catalog(hp), specs, all_seeds=True)


def test_each_level_is_the_mean_and_sd_of_the_seeds_records(lineages, result):
    ids, _, _ = lineages
    imp, control, factorized = result["series"]
    assert [s["seeds"] for s in result["series"]] == [[0, 1]] * 3
    assert imp["lineages"] == control["lineages"] == [ids["imp", 0], ids["imp", 1]]
    assert factorized["lineages"] == [ids["factorized", 0], ids["factorized", 1]]
    assert [level["round"] for level in imp["levels"]] == [0, 1, 2]
    assert [level["round"] for level in control["levels"]] == [1, 2]  # a control has no dense round
    for series, method in ((imp, "imp"), (control, "imp"), (factorized, "factorized")):
        for level in series["levels"]:
            runs = [recorded(ids[method, seed], level["round"], series["control"]) for seed in SEEDS]
            accuracies = [run["test_accuracy_at_early_stop"] for run in runs]
            mean = sum(accuracies) / 2
            assert level["test_accuracy_at_early_stop"]["values"] == accuracies
            assert level["test_accuracy_at_early_stop"]["mean"] == pytest.approx(mean, abs=1e-12)
            sd = math.sqrt(sum((a - mean) ** 2 for a in accuracies))  # n - 1 = 1
            assert level["test_accuracy_at_early_stop"]["sd"] == pytest.approx(sd, abs=1e-12)
            assert level["early_stop_iteration"]["mean"] == sum(run["early_stop_iteration"] for run in runs) / 2
            assert level["weights_remaining"] == pytest.approx(sum(run["weights_remaining"] for run in runs) / 2, abs=1e-12)
        dense = [recorded(ids[method, seed], 0)["test_accuracy_at_early_stop"] for seed in SEEDS]
        assert series["dense"]["mean"] == pytest.approx(statistics.fmean(dense), abs=1e-12)


def test_factorized_levels_are_matched_to_the_nearest_imp_level_and_show_their_own_weights(result):
    imp, control, factorized = result["series"]
    imp_weights = [level["weights_remaining"] for level in imp["levels"]]
    factorized_weights = [level["weights_remaining"] for level in factorized["levels"]]
    # A factorized round stores at most the ticket's weights: near its level, not on it.
    assert factorized_weights[1:] != imp_weights[1:]
    assert all(0.95 * i < f <= i for i, f in zip(imp_weights, factorized_weights))
    assert [row["weights_remaining"] for row in result["rows"]] == imp_weights  # no row of their own
    for row in result["rows"]:
        at_imp, at_control, at_factorized = row["levels"]
        assert at_imp["weights_remaining"] == row["weights_remaining"]
        nearest = min(factorized_weights, key=lambda w: abs(math.log(w / row["weights_remaining"])))
        assert at_factorized["weights_remaining"] == nearest
        assert (at_control is None) == (row["weights_remaining"] == 1.0)
    table = compare.format_table(result).splitlines()
    round_1 = next(line for line in table if line.startswith(f"| {compare.percent(imp_weights[1])} |"))
    level = factorized["levels"][1]
    accuracy = level["test_accuracy_at_early_stop"]
    cell = f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['sd']:.2f} / {level['early_stop_iteration']['mean']:.0f}"
    if compare.percent(level["weights_remaining"]) != compare.percent(imp_weights[1]):
        cell += f" (at {compare.percent(level['weights_remaining'])})"
    cells = [c.strip() for c in round_1.strip("|").split("|")]
    assert cells[3] == cell
    assert "±" in cells[1] and "±" in cells[2] and "(at" not in cells[1] + cells[2]


def test_the_figure_has_a_line_and_a_band_per_series_and_the_dense_reference(result):
    fig, axis, title = compare.draw(result)
    dense = {round(s["dense"]["mean"], 12) for s in result["series"]}
    lines = axis.get_lines()
    assert len(lines) == 3 + len(dense)
    assert [line.get_label() for line in lines[:3]] == ["IMP (2 seeds)", "random_sparse (2 seeds)", "factorized (2 seeds)"]
    factorized = [100 * level["test_accuracy_at_early_stop"]["mean"] for level in result["series"][2]["levels"]]
    assert list(lines[2].get_ydata()) == pytest.approx(factorized)
    assert len(axis.collections) == 3  # a ± sd band per series
    band = axis.collections[2].get_paths()[0].vertices[:, 1]
    spreads = [level["test_accuracy_at_early_stop"] for level in result["series"][2]["levels"]]
    assert max(band) == pytest.approx(max(100 * (s["mean"] + s["sd"]) for s in spreads))
    assert min(band) == pytest.approx(min(100 * (s["mean"] - s["sd"]) for s in spreads))
    assert "± 1 sd over seeds" in title
    report.percent_axis(axis)
    fig.canvas.draw()
    assert [label.get_text() for label in axis.get_xticklabels()] == ["70%", "80%", "90%", "100%"]


def test_one_seed_draws_no_band_and_names_none(lineages):
    ids, hp, _ = lineages
    drawn = io.StringIO()
    bar = lambda label, total: terminal.Bar(label, total, stream=drawn, shown=True)  # noqa: E731
    one = compare.compare(catalog(hp), [ids["imp", 0], ids["factorized", 1]], progress=bar)
    assert "reading lineages [##########..........] 1/2" in drawn.getvalue() and drawn.getvalue().endswith("\r\x1b[K")
    assert [s["seeds"] for s in one["series"]] == [[0], [1]]
    assert all(level["test_accuracy_at_early_stop"]["sd"] is None for s in one["series"] for level in s["levels"])
    _, axis, title = compare.draw(one)
    assert not axis.collections and "sd" not in title and "band" not in title
    assert "±" not in compare.format_table(one) and "seeds" not in compare.format_table(one)


def test_cli_prints_the_table_writes_a_png_and_logs_a_comparison_run_that_is_no_lineage(lineages, tmp_path, capsys):
    ids, hp, params = lineages
    figure, table = tmp_path / "methods.png", tmp_path / "methods.md"
    argv = ["--params", str(params), "compare", f"IMP={ids['imp', 1]}", f"factorized={ids['factorized', 1]}"]
    cli.main([*argv, "--all-seeds", "--figure", str(figure), "--table", str(table), "--log", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert [s["lineages"] for s in out["series"]] == [[ids["imp", 0], ids["imp", 1]], [ids["factorized", 0], ids["factorized", 1]]]
    assert table.read_text() == compare.format_table(out) + "\n"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(figure).shape[:2] == (450, 650)  # 6.5 x 4.5 in at 100 dpi
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.tags["lottery.kind"] == "comparison"
    assert run.data.tags["mlflow.note.content"] == table.read_text().rstrip("\n")
    assert sorted(a.path for a in client.list_artifacts(out["run_id"])) == ["compare.json", "compare.md", "compare.png"]
    assert sorted(p.info.run_id for p in catalog(hp).parents()) == sorted(ids.values())
    cli.main(["--params", str(params), "lineage", "list", "--json"])
    assert sorted(row["parent_run_id"] for row in json.loads(capsys.readouterr().out)) == sorted(ids.values())
    cli.main([*argv, "--figure", str(figure)])
    printed = capsys.readouterr().out
    assert f"| {compare.percent(1.0)} |" in printed and f"figure: {figure}" in printed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-lineage", "error: 'no-such-lineage': no lineage has that run id, DVC experiment, run name or hash"),
        ("x=", "error: 'x=': expected [LABEL=]NAME[:CONTROL]"),
    ],
)
def test_a_bad_name_is_a_one_line_error(lineages, spec, message):
    _, _, params = lineages
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--params", str(params), "compare", spec])
    assert str(exit_.value) == message


def test_a_control_the_lineages_lack_and_a_label_twice_are_errors(lineages):
    ids, hp, _ = lineages
    with pytest.raises(compare.CompareError, match=r"has no control 'reinit' \(its controls: random_sparse\)"):
        compare.compare(catalog(hp), [f"{ids['imp', 0]}:reinit"])
    with pytest.raises(compare.CompareError, match="has no control 'random_sparse' \\(its controls: none\\)"):
        compare.compare(catalog(hp), [f"{ids['factorized', 0]}:random_sparse"])
    with pytest.raises(compare.CompareError, match="label 'a' names two series"):
        compare.compare(catalog(hp), [f"a={ids['imp', 0]}", f"a={ids['factorized', 0]}"])


def test_parse():
    assert compare.parse("IMP=abcdef12:random_sparse") == ("IMP", "abcdef12", "random_sparse")
    assert compare.parse("rate=0.2=abcdef12") == ("rate=0.2", "abcdef12", None)
    assert compare.parse("lineage-1a2b3c4d") == ("lineage-1a2b3c4d", "lineage-1a2b3c4d", None)
    for bad in ("abc:", "=abc", "x="):
        with pytest.raises(compare.CompareError, match="expected"):
            compare.parse(bad)


def test_align_matches_the_nearest_row_and_gives_far_or_second_levels_rows_of_their_own():
    # 0.79 is nearest 0.8; 0.5 lies past 0.64 by more than half the 0.8-0.64 gap: a row of its own.
    rows = compare.align([[1.0, 0.8, 0.64], [1.0, 0.79, 0.5]])
    assert rows == [(1.0, {0: 0, 1: 0}), (0.8, {0: 1, 1: 1}), (0.64, {0: 2}), (0.5, {1: 2})]
    # 0.9 and 0.8 are both nearest 1.0: the nearer takes it, the other has a row of its own.
    rows = compare.align([[1.0, 0.5], [0.9, 0.8]])
    assert rows == [(1.0, {0: 0, 1: 0}), (0.8, {1: 1}), (0.5, {0: 1})]
    # a lone row takes only its own level
    assert compare.align([[1.0], [0.99]]) == [(1.0, {0: 0}), (0.99, {1: 0})]


def test_percent_ticks():
    assert report.percent_ticks(0.5, 100) == [0.5, 1, 2, 5, 10, 20, 50, 100]
    assert report.percent_ticks(16.8, 100) == [20, 30, 40, 50, 60, 80, 100]
    assert report.percent_ticks(3.6, 100) == [5, 10, 20, 30, 50, 100]
    assert report.percent_ticks(0.001, 100) == [0.001, 0.01, 0.1, 1, 10, 100]
    assert report.percent_ticks(64.1, 100) == [70, 80, 90, 100]
    assert report.percent_ticks(95.2, 100) == [95.2, 100]


def present(metrics):
    return {key: value for key, value in metrics.items() if value is not None}


@pytest.mark.parametrize("seeds", [1, 2])
def test_the_round_figure_labels_percent_and_names_error_bars_only_over_seeds(lineages, seeds):
    ids, hp, _ = lineages
    records = [catalog(hp).find(ids["imp", seed]) for seed in SEEDS[:seeds]]
    measurements = {
        branch: {r: [present(record.metrics(r, control)) for record in records] for r in ((0, 1, 2) if control is None else (1, 2))}
        for branch, control in ((report.TICKET, None), ("random_sparse", "random_sparse"))
    }
    fig, axes, title = report.draw(report.summarize(measurements, 0.005))
    assert sum(len(axis.containers) for axis in axes) == (0 if seeds == 1 else 2 * 2)  # error bars: 2 branches x 2 panels
    assert title == ("1 seed" if seeds == 1 else "2 seeds, means; error bars: min-max over seeds")
    for axis in axes:
        report.percent_axis(axis)
    fig.canvas.draw()
    assert [label.get_text() for label in axes[0].get_xticklabels()] == ["70%", "80%", "90%", "100%"]
