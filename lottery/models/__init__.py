"""The models: `catalog` (every model by name, `build`), `registry` (what a model module registers
itself in), `base` (what every model offers the pruning code), and one module per family."""
