"""Every file the pipeline reads or writes is named here, relative to the project root."""

from pathlib import Path

MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")
DATA = Path("data")


def dataset_root(dataset):
    return DATA / dataset


def init_checkpoint():
    return MODELS / "init" / "init.pt"


def lineage_file():
    """Run ids of the lineage's MLflow parent run and of each round's child run."""
    return MODELS / "lineage.json"


def round_dir(round_):
    return MODELS / f"round_{round_}"


def mask(round_):
    return round_dir(round_) / "mask.pt"


def sparsity_report(round_):
    return round_dir(round_) / "sparsity.json"


def start_weights(round_):
    return round_dir(round_) / "start.pt"


def trained_weights(round_):
    return round_dir(round_) / "trained.pt"


def rewind_point():
    """Weights at `rewind.iteration` of the dense run (θk); equal to θ0 when k = 0."""
    return round_dir(0) / "rewind_point.pt"


def training_log(round_):
    return round_dir(round_) / "training.json"


def round_metrics(round_):
    return METRICS / "rounds" / f"round_{round_}.json"


def summary():
    return METRICS / "summary.json"


def rounds_plot_data():
    return PLOTS / "rounds.csv"


def curve_plot_data(round_):
    """Validation and test metrics over training iterations, one file per round."""
    return PLOTS / "curves" / f"round_{round_}.csv"


def rounds_figure():
    return PLOTS / "lottery.png"
