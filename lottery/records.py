"""The one mapping from DVC outputs to MLflow records.

Each function here reads the files that one stage wrote and returns the `Record` that stands for
them in MLflow: which run, and the params, metrics, step metrics, tags and artifacts to log there.
Stages publish their records right after writing their outputs (evaluate@r also publishes the
training record of retrain@r, which logs nothing and so never imports MLflow); `sync` (run by
`report` and by `lottery sync`) publishes every record whose files exist, one whole record per run.
Publishing makes the run's current values the record's (lottery.publishing), so a record logs the
same whether a stage or `sync` logs it, logging it again changes nothing (no run, metric point,
model version or artifact upload is added twice), and a changed file replaces what it said before.
"""

from dataclasses import dataclass, field

import yaml

from lottery import curves, identity, masks, mlflow_view, paths
from lottery.io import load_torch, read_json

MASK_DIGEST_TAG = "lottery.mask_sha256"
ENVIRONMENT_TAG = "lottery.env."  # prefix: lottery.env.torch, .device, .threads, .python
SETTING_TAG = "lottery.setting."  # prefix: a params.yaml key that does not name the lineage, e.g. .train.device
PARAMS_ARTIFACT = "params.yaml"


@dataclass(frozen=True)
class Run:
    """Where a record goes: the lineage's parent run, a round's run, or a control's nested run."""

    kind: str  # lineage | round | control
    round: int = None
    control: str = None


LINEAGE = Run("lineage")


def branch_run(round_, control=None):
    return Run("control", round_, control) if control else Run("round", round_)


@dataclass
class Record:
    run: Run
    params: dict = field(default_factory=dict)  # logged once: they follow from the params that name the lineage
    metrics: dict = field(default_factory=dict)  # at step 0
    series: dict = field(default_factory=dict)  # name -> [(step, value)]: curves, Early-Bird distances
    tags: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # files under their own names, replaced when they change
    texts: dict = field(default_factory=dict)  # artifact name -> text, replaced when it changes
    # All that the workspace's files say of the run (`everything`): a metric the run holds beyond
    # it is no longer current.
    whole: bool = False


def lineage(hp):
    """The parent run: the params that name the lineage, and what it holds now (rounds, controls,
    the whole params file, and each other params.yaml key as a tag)."""
    params = flatten(identity.of(hp))
    return Record(
        LINEAGE,
        params=params,
        tags={"lottery.rounds": str(hp.rounds), "lottery.controls": ",".join(hp.controls.run), **settings(hp, params)},
        texts={PARAMS_ARTIFACT: yaml.safe_dump(hp.raw, sort_keys=False)},
    )


def settings(hp, params):
    """{lottery.setting.<key>: value} for each params.yaml key outside `params`: MLflow params never
    change, and these keys may change within a lineage (train.device, weight_agnostic.values).
    `rounds` is the lottery.rounds tag."""
    return {
        f"{SETTING_TAG}{key}": str(value)
        for key, value in flatten(hp.raw).items()
        if key not in params and not key.startswith("rounds.")
    }


def trained(hp, round_, control=None):
    """The environment that trained a branch (train, retrain@r, control@r-c)."""
    log = read_json(paths.training_log(round_, control))
    # Training logs written before environments were recorded have none.
    tags = {f"{ENVIRONMENT_TAG}{key}": str(value) for key, value in log.get("environment", {}).items()}
    return Record(branch_run(round_, control), tags={**tags, **_stage_tag(_training_stage(round_, control))})


def pruned(hp, round_):
    """prune@r: the method, the per-layer rates (or a factorized round's ranks and rank scale), the
    weights remaining, the mask."""
    sparsity = read_json(paths.sparsity_report(round_))
    layers = {f"rate.{name}": rate for name, rate in sparsity.get("rates", {}).items()}
    layers.update({f"rank.{name}": rank for name, rank in sparsity.get("ranks", {}).items()})
    scalars = {key: sparsity[key] for key in ("weights_remaining", "rank_scale") if key in sparsity}
    return Record(
        branch_run(round_),
        params={"round": round_, **sparsity["method"], **layers},
        metrics=scalars,
        tags=_stage_tag(f"prune@{round_}"),
        artifacts=[paths.mask(round_), paths.sparsity_report(round_)],
    )


def evaluated(hp, round_, control=None):
    """A branch's metrics file, its curve as step metrics (step = training iteration), its mask hash."""
    metrics = dict(numeric_metrics(read_json(paths.round_metrics(round_, control))))
    metrics.update(mlflow_view.branch_metrics(metrics))  # for MLflow's charts
    curve = curves.read_csv(paths.curve_plot_data(round_, control))
    series = curves.series(curve)  # a point without a test measurement logs no test step
    mask = load_torch(paths.mask(round_, control))
    # A pruned round's mask is prune@r's artifact; round 0's and the controls' are written here.
    artifacts = [paths.mask(round_, control)] if control or not round_ else []
    return Record(
        branch_run(round_, control),
        metrics=metrics,
        series=series,
        tags={MASK_DIGEST_TAG: masks.digest(mask), **_stage_tag(_evaluating_stage(round_, control))},
        artifacts=artifacts,
    )


def early_bird(hp):
    """Round 0's Early-Bird search: the distance per epoch, when it stopped, the matrix and heatmap."""
    searched = read_json(paths.early_bird_report())
    distances = [(epoch, d) for epoch, d in enumerate(searched["distances"], start=1) if d is not None]
    scalars = ("found", "epochs_trained", "iterations_trained")
    return Record(
        branch_run(0),
        metrics={f"early_bird.{key}": float(searched[key]) for key in scalars},
        series={"early_bird.distance": distances},
        artifacts=sorted(paths.early_bird_plots().iterdir()) + [paths.early_bird_report()],
    )


def compacted(hp, round_):
    """compact@r: the compression report as `compression.*` metrics and as a file."""
    report = read_json(paths.compression_report(round_))
    return Record(
        branch_run(round_),
        metrics=dict(numeric_metrics({"compression": report})),
        tags=_stage_tag(f"compact@{round_}"),
        artifacts=[paths.compression_report(round_)],
    )


def reported(hp):
    """report: the smallest matching ticket, and the figure and tables, which change as rounds are
    added; the round and compression tables as the run's description, the round table as step
    metrics (lottery.mlflow_view)."""
    summary = read_json(paths.summary())
    smallest = summary["smallest_matching_ticket"] or {}
    files = [paths.rounds_figure(), paths.summary(), paths.rounds_plot_data(), paths.compression_plot_data()]
    reports = [paths.compression_report(round_) for round_ in range(1, hp.rounds + 1)]
    compressions = [read_json(report) for report in reports if report.exists()]
    return Record(
        LINEAGE,
        metrics=dict(numeric_metrics({"smallest_matching_ticket": smallest})),
        series=mlflow_view.parent_series(summary),
        tags={mlflow_view.DESCRIPTION_TAG: mlflow_view.description(summary, compressions)},
        artifacts=[file for file in files if file.exists()],
    )


def everything(hp):
    """What all the lineage's stages log, from the files in the workspace: one whole record per run."""
    found = [lineage(hp)]
    for round_, control in hp.branches():
        if paths.training_log(round_, control).exists():
            found.append(trained(hp, round_, control))
        if round_ and not control and paths.sparsity_report(round_).exists():
            found.append(pruned(hp, round_))
        if paths.round_metrics(round_, control).exists():
            found.append(evaluated(hp, round_, control))
        if round_ and not control and paths.compression_report(round_).exists():
            found.append(compacted(hp, round_))
    if paths.early_bird_report().exists() and read_json(paths.early_bird_report())["enabled"]:
        found.append(early_bird(hp))
    if paths.summary().exists():
        found.append(reported(hp))
    return merged(found)


def merged(found):
    """One whole record per run of `found`, holding all that `found` says of that run."""
    runs = {}
    for record in found:
        whole = runs.setdefault(record.run, Record(record.run, whole=True))
        for part in ("params", "metrics", "series", "tags", "texts"):
            getattr(whole, part).update(getattr(record, part))
        whole.artifacts += record.artifacts
    return list(runs.values())


def flatten(tree, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric_metrics(metrics):
    """The numeric leaves of a (nested) metrics dict, as flat (name, value) pairs."""
    for key, value in flatten(metrics).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value


def _training_stage(round_, control):
    if control:
        return f"control@{round_}-{control}"
    return f"retrain@{round_}" if round_ else "train"


def _evaluating_stage(round_, control):
    """The stage that writes a branch's metrics: train evaluates round 0, a control evaluates itself."""
    return f"evaluate@{round_}" if round_ and not control else _training_stage(round_, control)


def _stage_tag(stage):
    """dvc.stage.<kind> = the DVC stage whose outputs the record comes from."""
    return {f"dvc.stage.{stage.split('@')[0]}": stage}
