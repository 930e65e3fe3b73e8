from lottery.pruning.strategy import Strategy, register


@register("magnitude")
class Magnitude(Strategy):
    """Unstructured magnitude pruning (IMP): the smallest |w| of the trained weights go first."""

    granularities = ("weight",)

    @staticmethod
    def weight_scores(model, mask, generator):
        params = dict(model.named_parameters())
        return {name: params[name].detach().abs().cpu() for name in mask}
