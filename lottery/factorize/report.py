"""Sparsity of a factorized model, reported against its dense architecture."""

from lottery import masks
from lottery.factorize.layers import INNER, OUTER, ranks, shape, weight_layers


def sparsity_report(model, mask):
    """masks.sparsity_report against the dense architecture: a factorized layer is reported under
    its dense weight's name, with the dense layer's weights, the factors' as kept, and its rank.
    For a model without factorized layers, exactly masks.sparsity_report."""
    report = masks.sparsity_report(mask, model.prunable_kinds())
    factorized = ranks(model)
    if not factorized:
        return report
    found, kinds = weight_layers(model), model.prunable_kinds()
    per_layer = {}
    for name, layer in found.items():
        if name not in factorized:
            per_layer[f"{name}.weight"] = report["layers"][f"{name}.weight"]
            continue
        m, n = shape(layer)
        halves = [report["layers"][f"{name}.{half}.weight"] for half in (INNER, OUTER)]
        kept = sum(half["kept"] for half in halves)
        per_layer[f"{name}.weight"] = {
            "kind": kinds[f"{name}.{OUTER}.weight"],
            "weights": m * n,
            "kept": kept,
            "weights_remaining": kept / (m * n),
            "rank": factorized[name],
        }
    total = sum(layer["weights"] for layer in per_layer.values())
    kept = sum(layer["kept"] for layer in per_layer.values())
    return {"layers": per_layer, "weights": total, "kept": kept, "weights_remaining": kept / total}
