"""Every pruning strategy. Adding one is its module and its name in the import below, which
registers it (plain imports, so lottery.deps sees that a stage using the registry runs them all)."""

from lottery.checks import one_of
from lottery.pruning import bn_slimming, edge_popup, l1_filter, magnitude, random  # noqa: F401
from lottery.pruning.strategy import REGISTRY  # complete once the modules above are imported


def check_params(hp, model):
    """The pruning rules: a registered strategy, and what it refuses (Strategy.check_params)."""
    one_of("prune.strategy", hp.prune.strategy, REGISTRY)
    REGISTRY[hp.prune.strategy].check_params(hp, model)
