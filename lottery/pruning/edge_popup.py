from lottery import devices, supermask
from lottery.pruning.strategy import Strategy, register


@register("edge_popup")
class EdgePopup(Strategy):
    """A supermask of the round's start weights (lottery.supermask): scores trained on the frozen
    rewind point, each layer keeping its top |scores| at the round's sparsity; no weight trains."""

    granularities = ("weight",)
    learns_scores = True

    @staticmethod
    def search(inputs, mask, drop, generator):
        hp = inputs.hp
        values = hp.weight_agnostic.values
        return supermask.search(
            inputs.weights,
            mask,
            drop,
            inputs.splits,
            hp.supermask,
            batch_size=hp.train.batch_size,
            seed=hp.seed,
            generator=generator,
            device=devices.prepare(hp.train),
            shared=(values, hp.weight_agnostic.signs) if hp.supermask.weight_agnostic else None,
            saves=inputs.saves,
        )
