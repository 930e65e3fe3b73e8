from lottery.pruning import register


@register("magnitude")
def magnitude(model, mask, generator):
    """Unstructured magnitude pruning (IMP): the smallest |w| of the trained weights go first."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().abs().cpu() for name in mask}
