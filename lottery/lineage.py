"""Lineages as `lottery lineage` shows them: a listing that says what tells them apart, one
round by round, two side by side with deltas and mask overlap. The lineages are read from the
MLflow store by lottery.lineage_catalog; lottery.reproduce re-runs one.
"""

from lottery import terminal
from lottery.lineage_catalog import SHOWN_METRICS
from lottery.provenance import CODE_TAG, COMMIT_TAG, DIRTY_TAG, EXPERIMENT_TAG

KEY_PARAMS = ("model.name", "data.dataset", "prune.strategy", "prune.rate", "rewind.iteration", "seed")
# The params `method` names a lineage by: `lineage list` shows them as its method, not as columns.
METHOD_PARAMS = (
    "prune.strategy",
    "prune.schedule",
    "rewind.target",
    "rewind.iteration",
    "rewind.scratch_budget",
    "early_bird.enabled",
    "factorize.enabled",
    "factorize.spectral_init",
    "factorize.frobenius_decay",
    "supermask.weight_agnostic",
)
STRATEGY_NAMES = {"magnitude": "magnitude", "bn_slimming": "slimming", "l1_filter": "L1 filter", "random": "random"}
# `lineage list`: the columns no terminal is too narrow for.
LISTED = ("run", "method", "rounds", "remaining", "accuracy")


def summary_row(lineage):
    """What `lineage list` shows of a lineage."""
    tags, params = lineage.parent.data.tags, lineage.parent.data.params
    last = lineage.rounds[-1] if lineage.rounds else None
    final = lineage.metrics(last) if last is not None else {}
    return {
        "parent_run_id": lineage.parent.info.run_id,
        "name": lineage.name,
        "dvc_experiment": tags.get(EXPERIMENT_TAG, ""),
        "git_commit": tags.get(COMMIT_TAG, "")[:10] + ("+dirty" if tags.get(DIRTY_TAG) == "true" else ""),
        "code": tags.get(CODE_TAG, "")[:8],
        "method": method(params),
        **{key: params.get(key) for key in KEY_PARAMS},
        "rounds": last,
        "weights_remaining": final.get("weights_remaining"),
        "test_accuracy_at_early_stop": final.get("test_accuracy_at_early_stop"),
    }


def method(params):
    """The method that a lineage's params (its parent run's, strings as MLflow holds them) describe,
    in a few words: IMP, one-shot magnitude, slimming, L1 filter, random, Early-Bird, supermask
    (weight-agnostic), factorized SI+FD (SI, FD, plain); then how a round starts where it is not
    θ0: rewind k, fine-tune, Scratch-E or Scratch-B."""
    return ", ".join(part for part in (_pruning(params), _start(params)) if part)


def _pruning(params):
    if "factorize.spectral_init" in params:
        parts = [name for name, key in (("SI", "factorize.spectral_init"), ("FD", "factorize.frobenius_decay")) if params.get(key) == "True"]
        return f"factorized {'+'.join(parts) or 'plain'}"
    if params.get("early_bird.enabled") == "True":
        return "Early-Bird"
    strategy = params.get("prune.strategy", "?")
    if strategy == "edge_popup":
        return "supermask, weight-agnostic" if params.get("supermask.weight_agnostic") == "True" else "supermask"
    oneshot = params.get("prune.schedule") == "oneshot"
    if strategy == "magnitude" and not oneshot:
        return "IMP"
    name = STRATEGY_NAMES.get(strategy, strategy)
    return f"one-shot {name}" if oneshot else name


def _start(params):
    target = params.get("rewind.target", "init")
    if target == "init":
        iteration = params.get("rewind.iteration", "0")
        return "" if iteration == "0" else f"rewind {iteration}"
    if target == "scratch":
        return "Scratch-B" if params.get("rewind.scratch_budget") == "flops" else "Scratch-E"
    return "fine-tune"


def differing(param_sets):
    """The keys whose value (or presence) is not the same in every one of `param_sets`; KEY_PARAMS
    first, then by name."""
    keys = set().union(*param_sets) if param_sets else set()
    found = [key for key in keys if len({params.get(key) for params in param_sets}) > 1]
    return sorted(found, key=lambda key: (KEY_PARAMS.index(key) if key in KEY_PARAMS else len(KEY_PARAMS), key))


def listing(lineages):
    """`lineage list` as rows: each lineage's run id (its first 8 characters name it), DVC
    experiment and method; then what differs between the lineages listed: their params (for a
    single lineage, KEY_PARAMS; '-' where a lineage has no such param), controls, commit and code;
    then its last round, weights remaining and test accuracy at early stop. Returns (rows, the
    columns in display order); of those not in LISTED, the earlier matter more."""
    params = [found.parent.data.params for found in lineages]
    varying = differing(params) if len(lineages) > 1 else list(KEY_PARAMS)
    shown_params = [key for key in varying if key not in METHOD_PARAMS]
    rows = []
    for found, values in zip(lineages, params):
        summary = summary_row(found)
        rows.append(
            {
                "run": summary["parent_run_id"][:8],
                "experiment": summary["dvc_experiment"],
                "method": method(values),
                **{key: values.get(key, "-") for key in shown_params},
                "controls": found.parent.data.tags.get("lottery.controls", ""),
                "commit": summary["git_commit"],
                "code": summary["code"],
                "rounds": summary["rounds"],
                "remaining": summary["weights_remaining"],
                "accuracy": summary["test_accuracy_at_early_stop"],
            }
        )
    provenance = [key for key in ("controls", "commit", "code") if len({row[key] for row in rows}) > 1]
    return rows, ["run", "experiment", "method", *shown_params, *provenance, "rounds", "remaining", "accuracy"]


def round_table(lineage):
    """Per round: the ticket's metrics (a factorized round's ranks too), and each control's test
    accuracy at early stop."""
    controls = sorted({control for _, control in lineage.branches if control})
    rows = []
    for round_ in lineage.rounds:
        row = {"round": round_, **lineage.metrics(round_)}
        ranks = lineage.ranks(round_)
        if ranks:
            row["ranks"] = " ".join(f"{layer}:{rank}" for layer, rank in ranks.items())
        for control in controls:
            control_metrics = lineage.metrics(round_, control)
            row[f"{control}.test_accuracy_at_early_stop"] = (
                control_metrics["test_accuracy_at_early_stop"] if control_metrics else None
            )
        rows.append(row)
    return rows


def mask_overlap(mask_a, mask_b):
    """Per layer: Jaccard index of the kept weights and normalised Hamming distance of the masks."""
    overlap = {}
    for name in sorted(set(mask_a) & set(mask_b)):
        a, b = mask_a[name].bool(), mask_b[name].bool()
        if a.shape != b.shape:
            continue
        union = int((a | b).sum())
        overlap[name] = {
            "jaccard": int((a & b).sum()) / union if union else 1.0,
            "hamming": int((a ^ b).sum()) / a.numel(),
        }
    return overlap


def diff(catalog, a, b, progress=terminal.no_bar):
    """Params that differ; per round, metrics side by side with deltas, per-layer mask overlap, and
    per-layer ranks where either lineage is factorized. `progress(label, total)`: a terminal.Bar
    stepped once per round (whose masks are read from the store)."""
    params_a, params_b = a.parent.data.params, b.parent.data.params
    params = {
        key: {"a": params_a.get(key), "b": params_b.get(key)}
        for key in sorted(set(params_a) | set(params_b))
        if params_a.get(key) != params_b.get(key)
    }
    code_a, code_b = (side.parent.data.tags.get(CODE_TAG) for side in (a, b))
    rounds = []
    common = sorted(set(a.rounds) & set(b.rounds))
    with progress("reading masks", len(common)) as bar:
        for round_ in common:
            rounds.append(_diff_round(catalog, a, b, round_))
            bar.step(f"round {round_}")
    return {
        "a": a.parent.info.run_id,
        "b": b.parent.info.run_id,
        "params": params,
        "code": None if code_a == code_b else {"a": code_a, "b": code_b},
        "rounds": rounds,
        "rounds_only_in_a": sorted(set(a.rounds) - set(b.rounds)),
        "rounds_only_in_b": sorted(set(b.rounds) - set(a.rounds)),
    }


def _diff_round(catalog, a, b, round_):
    """One round of `diff`: metrics with deltas, mask overlap (None if a mask is not reachable), ranks."""
    metrics_a, metrics_b = a.metrics(round_), b.metrics(round_)
    row = {"round": round_, "metrics": {}}
    for key in SHOWN_METRICS:
        va, vb = metrics_a[key], metrics_b[key]
        row["metrics"][key] = {"a": va, "b": vb, "delta": None if va is None or vb is None else vb - va}
    mask_a, mask_b = catalog.mask(a, round_), catalog.mask(b, round_)
    row["masks"] = mask_overlap(mask_a, mask_b) if mask_a is not None and mask_b is not None else None
    ranks_a, ranks_b = a.ranks(round_), b.ranks(round_)
    row["ranks"] = {layer: {"a": ranks_a.get(layer), "b": ranks_b.get(layer)} for layer in sorted({*ranks_a, *ranks_b})}
    return row


def differs(result):
    """Whether a diff shows any difference at all."""
    metric_change = any(m["delta"] for r in result["rounds"] for m in r["metrics"].values())
    mask_change = any(o["hamming"] for r in result["rounds"] for o in (r["masks"] or {}).values())
    return bool(result["params"] or result["code"] or metric_change or mask_change or result["rounds_only_in_a"] or result["rounds_only_in_b"])
