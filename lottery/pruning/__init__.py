"""Pruning: a strategy scores weights or channels, and the lowest scores go.

One module per concern, none of which imports this package's others in a circle:

- `selection`: which entries go, given scores (top-k, the stable-sort drop, layerwise and global
  lowest-drop); knows no strategy and no params.
- `rates`: how many go (per-layer rates, compounding over rounds, drop counts, channel floors
  and the channel budget).
- `strategy`: the registry and the `Strategy` base class a strategy module imports.
- `strategies`: the list of strategy modules; importing it registers them all.
- `driver`: `prune` (a round's new mask) and `kept_weights`, which run a registered strategy.

Adding a strategy is one module with a `@register("name")` subclass of `Strategy`, and its name
in the import list of `strategies`.
"""
