"""Low-rank factorized layers (Khodak et al. 2021): a layer's weight matrix W (m×n) stored as
two factors U (m×r) and V (n×r), W = UVᵀ, and run as two smaller layers.

Which layers: every Linear and Conv2d but the output layer, at rank r = max(1, round(scale ·
min(m, n))) (`plans.rank_plan`; parameter matching may give a layer one more,
`plans.matched_ranks`). A layer whose factors would store at least as many weights as it does
(r(m+n) ≥ mn) stays dense. BatchNorm, biases (the second factor keeps the layer's) and every
other layer stay as they are.

The modules, by role: `layers` (the factorized layers, factorizing a model, its ranks), `plans`
(which ranks, parameter matching), `decay` (Frobenius decay, a training-loop plug-in),
`report` (sparsity against the dense architecture) and `rules` (what a factorized lineage needs
of the params, run by the validate stage).
"""
