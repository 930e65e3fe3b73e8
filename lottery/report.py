"""The lineage at a glance: per round, the ticket beside the dense net and each control, over seeds.

`measurements` maps a branch ("ticket" or a control's name) to {round: [one metrics dict per
seed]}; round 0 of the ticket is the dense network. A single lineage is one seed.
"""

import math
import statistics

from lottery.io import atomic_path, csv_text
from lottery.report_tables import TICKET, branches

COMPARED = ("test_accuracy_at_early_stop", "early_stop_iteration", "final_test_accuracy")
# Compared too where the lineage measured them (params weight_agnostic.values).
WEIGHT_AGNOSTIC = ("weight_agnostic_mean_accuracy", "weight_agnostic_best_accuracy")


def stats(values):
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def compared(metrics):
    """The metrics the round table compares, given one branch's metrics dict."""
    return COMPARED + (WEIGHT_AGNOSTIC if WEIGHT_AGNOSTIC[0] in metrics else ())


def summarize(measurements, tolerance):
    """Per round: every branch's metrics over seeds and the verdict; the smallest matching ticket.

    A winning ticket (LTH): mean test accuracy at early stop at least the dense net's, and mean
    early-stop iteration at most the dense net's.
    """
    ticket = measurements[TICKET]
    metrics = compared(ticket[0][0])
    dense = {metric: stats([m[metric] for m in ticket[0]]) for metric in metrics}
    rows = []
    for round_ in sorted(ticket):
        row = {"round": round_, "weights_remaining": statistics.fmean(m["weights_remaining"] for m in ticket[round_])}
        for branch, by_round in measurements.items():
            if round_ in by_round:
                row[branch] = {metric: stats([m[metric] for m in by_round[round_]]) for metric in metrics}
        if round_ > 0:
            row["winning_ticket"] = (
                row[TICKET]["test_accuracy_at_early_stop"]["mean"] >= dense["test_accuracy_at_early_stop"]["mean"]
                and row[TICKET]["early_stop_iteration"]["mean"] <= dense["early_stop_iteration"]["mean"]
            )
        rows.append(row)
    floor = dense["test_accuracy_at_early_stop"]["mean"] - tolerance
    matching = [r for r in rows[1:] if r[TICKET]["test_accuracy_at_early_stop"]["mean"] >= floor]
    smallest = min(matching, key=lambda r: r["weights_remaining"], default=None)
    return {
        "rounds": rows,
        "seeds": len(ticket[0]),
        "tolerance": tolerance,
        "dense": dense,
        "smallest_matching_ticket": (
            {
                "round": smallest["round"],
                "weights_remaining": smallest["weights_remaining"],
                "test_accuracy_at_early_stop": smallest[TICKET]["test_accuracy_at_early_stop"]["mean"],
            }
            if smallest
            else None
        ),
    }


def headline(summary):
    """The lineage in one row of `dvc exp show` (metrics/headline.json): the dense network's test
    accuracy at early stop; the weights remaining and accuracy of the smallest matching ticket
    (None if no round matches); the last round, its weights remaining and accuracy; and the
    verdict on the smallest matching ticket: "winning" (a winning ticket too), "matching" (within
    the tolerance only) or "no match". Fractions, means over seeds, as in the summary."""
    accuracy = "test_accuracy_at_early_stop"
    smallest = summary["smallest_matching_ticket"]
    rows = {r["round"]: r for r in summary["rounds"]}
    last = summary["rounds"][-1]
    if smallest is None:
        verdict = "no match"
    else:
        verdict = "winning" if rows[smallest["round"]].get("winning_ticket") else "matching"
    return {
        "dense_acc": summary["dense"][accuracy]["mean"],
        "match_weights": smallest["weights_remaining"] if smallest else None,
        "match_acc": smallest[accuracy] if smallest else None,
        "last_round": last["round"],
        "last_weights": last["weights_remaining"],
        "last_acc": last[TICKET][accuracy]["mean"],
        "verdict": verdict,
    }


def rounds_csv(summary):
    """One row per round: weights remaining, then each branch's mean/min/max of each compared metric."""
    columns = ["round", "weights_remaining", "percent_remaining"]
    for branch in branches(summary):
        columns += [f"{branch}_{metric}{part}" for metric in summary["dense"] for part in ("", "_min", "_max")]
    rows = []
    for r in summary["rounds"]:
        row = {"round": r["round"], "weights_remaining": r["weights_remaining"], "percent_remaining": 100 * r["weights_remaining"]}
        for branch in branches(summary):
            for metric, s in r.get(branch, {}).items():
                row.update({f"{branch}_{metric}": s["mean"], f"{branch}_{metric}_min": s["min"], f"{branch}_{metric}_max": s["max"]})
        rows.append(row)
    return csv_text(rows, columns)


COMPRESSION_FIGURES = ("parameters", "flops", "bytes", "latency_ms_batch_1", "latency_ms_batch_64")
SPEEDUPS = ("flops_speedup", "measured_speedup_batch_1", "measured_speedup_batch_64")


def compression_csv(reports):
    """One row per round: dense and compact figures side by side, and the speedups."""
    columns = ["round", "form", "latency_device"]
    columns += [f"{side}_{figure}" for figure in COMPRESSION_FIGURES for side in ("dense", "compact")]
    columns += list(SPEEDUPS)
    rows = []
    for r in reports:
        row = {"round": r["round"], "form": r["form"], "latency_device": r["latency_device"], **{key: r[key] for key in SPEEDUPS}}
        row.update({f"{side}_{f}": r[side][f] for f in COMPRESSION_FIGURES for side in ("dense", "compact")})
        rows.append(row)
    return csv_text(rows, columns)


def format_early_bird(saved):
    """One paragraph: when the Early-Bird ticket emerged and what it saved."""
    when = f"emerged at epoch {saved['epoch']}" if saved["found"] else "did not emerge; the last mask was used"
    return (
        f"Early-Bird ticket {when} ({100 * saved['emerged_at_fraction_of_training']:.0f}% of "
        f"{saved['full_training_epochs']:.0f} epochs). Search + retrain: {saved['epochs_early_bird']:.1f} epochs, "
        f"{saved['training_flops_early_bird']:.3g} FLOPs; standard train + prune + retrain: "
        f"{saved['epochs_standard']:.1f} epochs, {saved['training_flops_standard']:.3g} FLOPs; "
        f"{saved['compute_saving']:.2f}x less compute."
    )


def format_table(summary):
    """The round table as Markdown: accuracy at early stop / early-stop iteration per branch (means),
    then, where measured, each branch's weight-agnostic accuracy: mean over the shared weights / best."""
    names = branches(summary)
    agnostic = WEIGHT_AGNOSTIC[0] in summary["dense"]
    headers = [f"{b}: acc. / early stop" for b in names] + ([f"{b}: weight-agnostic mean / best" for b in names] if agnostic else [])
    lines = [
        "| round | weights remaining | " + " | ".join(headers) + " | winning ticket |",
        "|---:|---:|" + "---:|" * len(headers) + "---|",
    ]
    for r in summary["rounds"]:
        cells = [_cell(r, b, "test_accuracy_at_early_stop", "early_stop_iteration", "{:.2f}% / {:.0f}", 100, 1) for b in names]
        if agnostic:
            cells += [_cell(r, b, *WEIGHT_AGNOSTIC, "{:.2f}% / {:.2f}%", 100, 100) for b in names]
        verdict = {True: "yes", False: "no"}.get(r.get("winning_ticket"), "(dense)")
        lines.append(f"| {r['round']} | {100 * r['weights_remaining']:.1f}% | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def _cell(row, branch, first, second, template, first_scale, second_scale):
    if branch not in row:
        return ""
    return template.format(first_scale * row[branch][first]["mean"], second_scale * row[branch][second]["mean"])


def figure(summary, path):
    """Write the round figure (`draw`) to `path` as a PNG."""
    fig, axes, title = draw(summary)
    save_density_figure(fig, axes, title, path)


def draw(summary):
    """LTH Figures 3-4 style: test accuracy at early stop and early-stop iteration vs percent of
    weights remaining, ticket vs each control, with min-max error bars over seeds where there are
    several; where measured, a third panel of the weight-agnostic accuracy (mean over the shared
    weights). Returns (figure, axes, title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("test_accuracy_at_early_stop", 100, "test accuracy at early stop (%)"),
        ("early_stop_iteration", 1, "early-stop iteration"),
    ]
    if WEIGHT_AGNOSTIC[0] in summary["dense"]:
        panels.append((WEIGHT_AGNOSTIC[0], 100, "weight-agnostic accuracy, mean over w (%)"))
    seeds = summary["seeds"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for branch in branches(summary):
        rows = [r for r in summary["rounds"] if branch in r]
        percent = [100 * r["weights_remaining"] for r in rows]
        for axis, (metric, scale, _) in zip(axes, panels):
            mean = [scale * r[branch][metric]["mean"] for r in rows]
            if seeds == 1:
                axis.plot(percent, mean, marker="o", label=branch)
                continue
            low = [m - scale * r[branch][metric]["min"] for m, r in zip(mean, rows)]
            high = [scale * r[branch][metric]["max"] - m for m, r in zip(mean, rows)]
            axis.errorbar(percent, mean, yerr=[low, high], marker="o", capsize=3, label=branch)
    for axis, (metric, scale, label) in zip(axes, panels):
        axis.axhline(scale * summary["dense"][metric]["mean"], ls="--", c="gray", label="dense")
        axis.set_ylabel(label)
    title = "1 seed" if seeds == 1 else f"{seeds} seeds, means; error bars: min-max over seeds"
    return fig, axes, title


# Tick sets for a log axis of percentages, sparsest first: the multiples of each power of ten.
TICK_MANTISSAS = ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 2, 3, 4, 5, 6, 8), tuple(range(1, 10)))


def percent_ticks(low, high):
    """Tick values for a log axis of percentages from `low` to `high`: of the TICK_MANTISSAS sets
    (100, 50, 20, 10, ...; ...; 100, 90, 80, ...), the densest that puts two ticks or more in the
    range, each at least 1/12 of the axis from the next; the two ends (to 3 digits) where none does."""
    span = math.log10(high / low)
    decades = range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1)
    chosen = []
    for mantissas in TICK_MANTISSAS:
        ticks = [float(f"{m}e{d}") for d in decades for m in mantissas]
        ticks = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(ticks) >= 2 and min(math.log10(b / a) for a, b in zip(ticks, ticks[1:])) >= span / 12:
            chosen = ticks
    return chosen or sorted({float(f"{low:.3g}"), float(f"{high:.3g}")})


def percent_axis(axis):
    """Make `axis`'s x axis a log axis of the percent of weights remaining, dense on the left,
    ticks labelled 100%, 50%, 20%, ... over the range of its data (`percent_ticks`)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_xscale("log")
    low, high = sorted(axis.dataLim.intervalx)
    if 0 < low <= high < math.inf:
        axis.xaxis.set_major_locator(FixedLocator(percent_ticks(low, high)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
        axis.xaxis.set_minor_formatter(NullFormatter())
    axis.invert_xaxis()
    axis.set_xlabel("weights remaining (log scale)")


def save_density_figure(fig, axes, title, path):
    """Give each axis a log x axis of the percent of weights remaining (`percent_axis`), a grid
    and a legend; title the figure and write it to `path` as a PNG."""
    import matplotlib.pyplot as plt

    for axis in axes:
        percent_axis(axis)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
