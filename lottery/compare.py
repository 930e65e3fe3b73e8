"""`lottery compare`: lineages, or groups of seeds, side by side at equal weights remaining.

Each compared series is named as the lineage commands name a lineage (lottery.lineage_catalog: parent run
id, DVC experiment, run name, or a prefix of at least 6 characters of the parent run id or lineage
hash), or by a prefix of at least 6 characters of a replicate group (tag lottery.replicate_group:
the lineages that differ in seed alone), tried first. `NAME:CONTROL` takes a control branch of
those lineages (e.g. `:random_sparse`) instead of their ticket, and `LABEL=NAME` names the series
in the table and figure (default: the spec as given). With `all_seeds`, a named lineage stands for
its whole replicate group.

A series' levels are its rounds that every one of its lineages has results for; at each, the
weights remaining (mean over seeds), and the test accuracy at early stop and early-stop iteration
over seeds. The table has one row per level: the first series' levels, and each other series'
level matched to the nearest row (see `match`), or a row of its own where no row is near.
"""

import math
import statistics
from dataclasses import dataclass

from lottery import mlflow_view, report, terminal
from lottery.errors import UserError
from lottery.lineage_catalog import current
from lottery.provenance import REPLICATE_TAG
from lottery.runs import COMPLETE_METRIC, KIND_TAG

KIND = "comparison"  # the lottery.kind tag of a comparison run: `LineageCatalog.parents` lists kind 'lineage' only
COMPARED_TAG = "lottery.compared"  # label=parent run ids of each series, one series a line
SPREAD = "mean ± sd over seeds"


class CompareError(UserError, ValueError):
    """Series that cannot be compared: a control the lineages lack, no results, a label twice."""


@dataclass
class Series:
    """One line of the comparison: some lineages (one per seed) and the branch compared."""

    label: str
    lineages: list  # lottery.lineage_catalog.LineageRecord, in seed order
    control: str = None  # None: the ticket


def parse(spec):
    """(label, name, control) of `[LABEL=]NAME[:CONTROL]`."""
    label, _, rest = spec.rpartition("=") if "=" in spec else (spec, "", spec)
    name, _, control = rest.partition(":")
    if not name or (":" in rest and not control) or not label:
        raise CompareError(f"{spec!r}: expected [LABEL=]NAME[:CONTROL]")
    return label, name, control or None


def resolve(catalog, spec, all_seeds=False):
    """The Series that `spec` names (see the module docstring)."""
    label, name, control = parse(spec)
    parents = _group(catalog, name)
    if not parents:
        found = catalog.find(name).parent
        group = found.data.tags.get(REPLICATE_TAG)
        parents = catalog.parents(replicate_group=group) if all_seeds and group else [found]
    records = [catalog.load(p) for p in sorted(parents, key=_seed)]
    if control:
        for record in records:
            controls = sorted({c for _, c in record.branches if c})
            if control not in controls:
                has = ", ".join(controls) or "none"
                raise CompareError(f"{spec}: lineage {record.name} has no control {control!r} (its controls: {has})")
    return Series(label, records, control)


def _group(catalog, name):
    """The parent runs of the replicate group whose tag starts with `name` (at least 6 characters)."""
    if len(name) < 6:
        return []
    parents = [p for p in catalog.parents() if p.data.tags.get(REPLICATE_TAG, "").startswith(name)]
    groups = {p.data.tags[REPLICATE_TAG] for p in parents}
    if len(groups) > 1:
        raise CompareError(f"{name!r}: names {len(groups)} replicate groups ({', '.join(sorted(groups))}); give more of one")
    return parents


def _seed(parent):
    return int(parent.data.tags.get("lottery.seed", 0))


def spread(values):
    """Mean and sample standard deviation (None for one value) of per-seed values, and the values."""
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values), "values": values}


def levels(series):
    """The series' levels, most weights first: per round that every lineage has results for, its
    weights remaining (mean over seeds), and test accuracy at early stop and early-stop iteration
    over seeds (`spread`)."""
    done = [
        {r for (r, c), run in record.branches.items() if c == series.control and _complete(run)}
        for record in series.lineages
    ]
    found = []
    for round_ in sorted(set.intersection(*done)):
        metrics = [record.metrics(round_, series.control) for record in series.lineages]
        found.append(
            {
                "round": round_,
                "weights_remaining": statistics.fmean(m["weights_remaining"] for m in metrics),
                "test_accuracy_at_early_stop": spread(m["test_accuracy_at_early_stop"] for m in metrics),
                "early_stop_iteration": spread(m["early_stop_iteration"] for m in metrics),
            }
        )
    if not found:
        raise CompareError(f"{series.label}: no round has results in MLflow in every one of its lineages")
    return sorted(found, key=lambda level: -level["weights_remaining"])


def _complete(run):
    return current(run, COMPLETE_METRIC) is not None


def dense(series):
    """Test accuracy at early stop of the series' dense networks (their round 0), or None where a
    lineage has no results there yet."""
    runs = [record.branches.get((0, None)) for record in series.lineages]
    values = [current(run, COMPLETE_METRIC) if run else None for run in runs]
    return None if None in values else spread(values)


def _distance(a, b):
    return abs(math.log(a / b))


def _reach(rows, i, level):
    """How far (in log weights) row i reaches towards `level`: half way to the next row on that
    side; past the first or last row, as far as it reaches on the other side; a lone row, only to
    itself."""
    toward = i + 1 if level < rows[i] else i - 1  # rows run from most weights to fewest
    if not 0 <= toward < len(rows):
        toward = 2 * i - toward
    if not 0 <= toward < len(rows):
        return 1e-9
    return _distance(rows[i], rows[toward]) / 2


def match(rows, weights):
    """{index in `weights`: index in `rows`}: each weight remaining matched to its nearest row (both
    lists from most weights to fewest) where that row reaches it (`_reach`); a row takes one weight
    at most, the nearest."""
    taken = {}
    for j, weight in enumerate(weights):
        if not rows:
            break
        i = min(range(len(rows)), key=lambda i: _distance(rows[i], weight))
        d = _distance(rows[i], weight)
        if d <= _reach(rows, i, weight) + 1e-12 and (i not in taken or d < taken[i][1]):
            taken[i] = (j, d)
    return {j: i for i, (j, _) in taken.items()}


def align(all_weights):
    """The table's rows, from most weights to fewest: (weights remaining, {series: index in its
    weights}). The first series' weights are rows; each next series' weights match a row (`match`)
    or, where none does, become rows of their own."""
    rows = []
    for k, weights in enumerate(all_weights):
        matched = match([weight for weight, _ in rows], weights)
        for j, i in matched.items():
            rows[i][1][k] = j
        rows += [(weight, {k: j}) for j, weight in enumerate(weights) if j not in matched]
        rows.sort(key=lambda row: -row[0])
    return rows


def compare(catalog, specs, all_seeds=False, progress=terminal.no_bar):
    """The comparison of the series `specs` name: each series' lineages, seeds, dense network and
    levels, and the rows of the table (one per level; per series, its level there or None).
    `progress(label, total)`: a terminal.Bar stepped as each series is read from the catalog."""
    series = []
    with progress("reading lineages", len(specs)) as bar:
        for spec in specs:
            series.append(resolve(catalog, spec, all_seeds))
            bar.step()
    labels = [s.label for s in series]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise CompareError(f"label {twice[0]!r} names two series: give each a label of its own (LABEL=NAME)")
    found = [levels(s) for s in series]
    rows = align([[level["weights_remaining"] for level in series_levels] for series_levels in found])
    return {
        "series": [
            {
                "label": s.label,
                "control": s.control,
                "lineages": [record.parent.info.run_id for record in s.lineages],
                "seeds": [_seed(record.parent) for record in s.lineages],
                "replicate_groups": sorted({record.parent.data.tags.get(REPLICATE_TAG, "") for record in s.lineages}),
                "dense": dense(s),
                "levels": series_levels,
            }
            for s, series_levels in zip(series, found)
        ],
        "rows": [
            {"weights_remaining": weight, "levels": [found[k][cells[k]] if k in cells else None for k in range(len(found))]}
            for weight, cells in rows
        ],
    }


def percent(fraction):
    """A weights-remaining fraction as the table prints it: 80.0%, 5.1%, 0.41%."""
    value = 100 * fraction
    return f"{value:.1f}%" if value >= 1 else f"{value:.2g}%"


def _cell(level, row_weights):
    if level is None:
        return ""
    accuracy, stop = level["test_accuracy_at_early_stop"], level["early_stop_iteration"]
    text = f"{100 * accuracy['mean']:.2f}" + (f" ± {100 * accuracy['sd']:.2f}" if accuracy["sd"] is not None else "")
    text += f" / {stop['mean']:.0f}"
    actual = percent(level["weights_remaining"])
    return text + (f" (at {actual})" if actual != percent(row_weights) else "")


def describe(series):
    """One line on what a series is: its branch, its seeds and lineages."""
    seeds = ("seeds " if len(series["seeds"]) > 1 else "seed ") + ", ".join(str(seed) for seed in series["seeds"])
    branch = f"control {series['control']}" if series["control"] else "ticket"
    lineages = ("lineages " if len(series["lineages"]) > 1 else "lineage ") + ", ".join(series["lineages"])
    return f"{series['label']}: {branch}, {seeds} ({lineages})"


def format_table(result):
    """The comparison as Markdown: what each series is, what a cell holds, then one row per level."""
    names = [s["label"] + (f" ({len(s['seeds'])} seeds)" if len(s["seeds"]) > 1 else "") for s in result["series"]]
    rows = [[_cell(level, row["weights_remaining"]) for level in row["levels"]] for row in result["rows"]]
    several = any(len(s["seeds"]) > 1 for s in result["series"])
    legend = "Test accuracy at early stop (%) / early-stop iteration"
    if several:
        legend = f"Test accuracy at early stop (%, {SPREAD}) / early-stop iteration (mean)"
    if any("(at " in cell for cells in rows for cell in cells):
        legend += "; (at x%): the weights remaining of the level matched to this row"
    lines = [f"- {describe(s)}" for s in result["series"]]
    lines += ["", legend + ".", "", "| weights remaining | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    lines += [f"| {percent(row['weights_remaining'])} | " + " | ".join(cells) + " |" for row, cells in zip(result["rows"], rows)]
    return "\n".join(lines)


def draw(result):
    """The figure: test accuracy at early stop against weights remaining, one line per series
    through its means, a band of ± 1 sd where it has 2 seeds or more, and the dense networks as
    dashed reference lines (one grey line when every series has the same). Returns (figure, axis, title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.5))
    for series in result["series"]:
        x = [100 * level["weights_remaining"] for level in series["levels"]]
        mean = [100 * level["test_accuracy_at_early_stop"]["mean"] for level in series["levels"]]
        seeds = len(series["seeds"])
        (line,) = axis.plot(x, mean, marker="o", label=series["label"] + (f" ({seeds} seeds)" if seeds > 1 else ""))
        if seeds > 1:
            sd = [100 * level["test_accuracy_at_early_stop"]["sd"] for level in series["levels"]]
            low, high = [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)]
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    _dense_lines(axis, result["series"])
    axis.set_ylabel("test accuracy at early stop (%)")
    banded = any(len(s["seeds"]) > 1 for s in result["series"])
    title = "test accuracy at early stop against weights remaining" + ("; bands: ± 1 sd over seeds" if banded else "")
    return fig, axis, title


def _dense_lines(axis, series):
    """A dashed line per distinct dense accuracy: grey 'dense' when all series share one, else in
    the colour of the first series that has it, naming the series."""
    colors = [line.get_color() for line in axis.get_lines()]  # one per series, in order
    groups = {}
    for s, color in zip(series, colors):
        if s["dense"]:
            groups.setdefault(round(s["dense"]["mean"], 12), []).append((s["label"], color))
    for value, members in groups.items():
        color, label = ("gray", "dense") if len(groups) == 1 else (members[0][1], "dense: " + ", ".join(m[0] for m in members))
        axis.axhline(100 * value, ls="--", c=color, lw=1, label=label)


def figure(result, path):
    """Write the figure (`draw`) to `path` as a PNG."""
    fig, axis, title = draw(result)
    report.save_density_figure(fig, [axis], title, path)


def log(catalog, result, table, figure_path):
    """A comparison run in the catalog's experiment holding the table (also its description, cut to
    MLflow's limit on a tag), the figure and the comparison as JSON; tagged kind 'comparison', so
    no lineage listing counts it. Returns its run id."""
    import json
    import tempfile
    from pathlib import Path

    labels = [s["label"] for s in result["series"]]
    tags = {
        KIND_TAG: KIND,
        "mlflow.runName": ("compare " + " vs ".join(labels))[:250],
        mlflow_view.DESCRIPTION_TAG: _fit(table, "\n\n(cut: the whole table is the compare.md artifact)"),
        COMPARED_TAG: _fit("\n".join(f"{s['label']}={','.join(s['lineages'])}" for s in result["series"]), "\n(cut)"),
    }
    run_id = catalog.client.create_run(catalog.experiment_id, tags=tags).info.run_id
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "compare.md").write_text(table + "\n", encoding="utf-8")
            (Path(tmp) / "compare.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
            (Path(tmp) / "compare.png").write_bytes(Path(figure_path).read_bytes())
            catalog.client.log_artifacts(run_id, tmp)
        status = "FINISHED"
    finally:
        catalog.client.set_terminated(run_id, status)
    return run_id


def _fit(text, cut):
    """`text` as an MLflow tag value: whole, or cut to MLflow's limit ending with `cut`."""
    limit = mlflow_view.DESCRIPTION_LIMIT
    return text if len(text) <= limit else text[: limit - len(cut)] + cut
