from lottery import devices, supermask
from lottery.errors import ParamsError
from lottery.models.base import batchnorm_scales
from lottery.pruning.strategy import Strategy, register


@register("edge_popup")
class EdgePopup(Strategy):
    """A supermask of the round's start weights (lottery.supermask): scores trained on the frozen
    rewind point, each layer keeping its top |scores| at the round's sparsity; no weight trains."""

    granularities = ("weight",)
    learns_scores = True

    @classmethod
    def check_params(cls, hp, model):
        """The search scores the weights the round will start from, and none of them trains."""
        super().check_params(hp, model)
        if hp.rewind.target != "init":
            raise ParamsError(
                f"rewind.target = {hp.rewind.target!r}: prune.strategy {hp.prune.strategy!r} searches a mask "
                "for the rewind point's weights, so it needs 'init'"
            )
        if hp.prune.scope != "layerwise":
            raise ParamsError(f"prune.scope = {hp.prune.scope!r}: {hp.prune.strategy} keeps each layer's top scores (use 'layerwise')")
        if batchnorm_scales(model):
            raise ParamsError(
                f"model.name = {hp.model.name!r}: has BatchNorm, whose statistics a supermask of frozen weights "
                "has no stage to keep; use lenet_300_100 or conv2/conv4/conv6"
            )
        if hp.supermask.weight_agnostic and not hp.weight_agnostic.values:
            raise ParamsError("supermask.weight_agnostic = true: draws its shared weights from weight_agnostic.values, which is []")

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
