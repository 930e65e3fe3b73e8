"""Every file the pipeline reads or writes is named here, relative to the project root."""

import os
from pathlib import Path

MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
DATA = Path("data")


def project_root():
    """The DVC project's root. While DVC runs a stage, DVC_ROOT names it, and for an experiment run in
    a temporary copy (`dvc exp run --queue`, `--temp`) it names the project the experiment was
    queued from, not the copy; elsewhere it is the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd())


def in_round_saves():
    """Where training loops keep their in-round saves (lottery.resume): at the project root, outside
    every DVC output, so that DVC, which deletes a stage's outputs before it runs it, leaves them."""
    return project_root() / ".lottery" / "saves"


def dataset_root(dataset):
    return DATA / dataset


def code_stamps():
    """Written by the `code` stage: one stamp per stage script, `<name>.json` (lottery.deps), which
    that script's stages depend on."""
    return MODELS / "code"


def params_validated():
    """Written by the `validate` stage once params.yaml passes; every other stage depends on it, so
    DVC stops at a bad value before it deletes any other stage's outputs. Its bytes never change."""
    return MODELS / "params.validated"


def init_checkpoint():
    return MODELS / "init" / "init.pt"


def lineage_file():
    """Run ids of the lineage's MLflow parent run and of each round's child run."""
    return MODELS / "lineage.json"


def round_dir(round_):
    return MODELS / f"round_{round_}"


def branch_dir(round_, control=None):
    """Round r's ticket, or one of its control branches (models/round_<r>/controls/<control>)."""
    return round_dir(round_) / "controls" / control if control else round_dir(round_)


def mask(round_, control=None):
    return branch_dir(round_, control) / "mask.pt"


def sparsity_report(round_):
    return round_dir(round_) / "sparsity.json"


def start_weights(round_):
    return round_dir(round_) / "start.pt"


def trained_weights(round_, control=None):
    return branch_dir(round_, control) / "trained.pt"


def rewind_point():
    """Weights at `rewind.iteration` of the dense run (θk); equal to θ0 when k = 0."""
    return round_dir(0) / "rewind_point.pt"


def training_log(round_, control=None):
    return branch_dir(round_, control) / "training.json"


def _branch_name(round_, control):
    return f"round_{round_}_{control}" if control else f"round_{round_}"


def round_metrics(round_, control=None):
    return METRICS / "rounds" / f"{_branch_name(round_, control)}.json"


def summary():
    return METRICS / "summary.json"


def headline():
    """The lineage in one row: the only metrics file dvc.yaml declares, so `dvc exp show` stays narrow."""
    return METRICS / "headline.json"


def replicates_summary():
    return METRICS / "replicates.json"


def replicates_plot_data():
    return PLOTS / "replicates.csv"


def replicates_figure():
    return PLOTS / "replicates.png"


def rounds_plot_data():
    return PLOTS / "rounds.csv"


def curve_plot_data(round_, control=None):
    """Validation and test metrics over training iterations, one file per round and branch."""
    return PLOTS / "curves" / f"{_branch_name(round_, control)}.csv"


def rounds_figure():
    return PLOTS / "lottery.png"


def compact_model(round_):
    """Round r's model as shipped: channels removed (channel masks) or stored sparse (weight masks)."""
    return round_dir(round_) / "compact.pt"


def compression_report(round_):
    """Parameters, FLOPs, bytes and CPU latency of round r's compact model against the dense one."""
    return METRICS / "compression" / f"round_{round_}.json"


def compression_plot_data():
    """Every round's compression report in one table (a measurement: latency varies run to run)."""
    return PLOTS / "compression.csv"


def early_bird_report():
    """Whether and when the Early-Bird ticket emerged, per-epoch mask distances, the compute saved."""
    return METRICS / "early_bird.json"


def early_bird_plots():
    """The pairwise mask-distance matrix over epochs (distances.json) and its heatmap (heatmap.png)."""
    return PLOTS / "early_bird"
