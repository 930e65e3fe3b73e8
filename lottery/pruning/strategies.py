"""Every pruning strategy. Adding one is its module and its name in the import below, which
registers it (plain imports, so lottery.deps sees that a stage using the registry runs them all)."""

from lottery.pruning import bn_slimming, edge_popup, l1_filter, magnitude, random  # noqa: F401
from lottery.pruning.strategy import REGISTRY  # noqa: F401  complete once the modules above are imported
