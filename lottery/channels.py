"""Channels: which parameters each prunable channel touches, and the physically smaller model.

The dependency graph comes from torch-pruning: it traces the model and groups the channels that
must go together (a conv's output channel, its BatchNorm, the next layer's input channel, and in a
ResNet every tensor added to the same residual stream). We use it rather than a hand-written
graph because residual coupling is easy to get subtly wrong, and it also does the surgery that
removes the channels. A channel mask is stored as an ordinary weight mask (see lottery.masks)
that zeroes a pruned channel everywhere it appears, so training, evaluation and the LTH code need
no second kind of mask; `kept` reads the channels back from it.
"""

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from lottery.errors import UserError

_SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


@dataclass(frozen=True)
class Member:
    param: str  # parameter name
    layer: type  # the module class it belongs to: nn.Conv2d, nn.Linear or nn.BatchNorm2d
    dim: int  # the dimension that indexes the group's channels
    index: tuple  # index[j]: the position along `dim` of the group's channel j


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # weight of the group's root layer, e.g. 'features.0.weight'
    size: int  # channels in the group
    members: tuple  # every Member slice a channel of the group touches

    def output_weights(self, layer):
        """Weights of the group's `layer` modules (a type) whose outputs are the group's channels."""
        return [m.param for m in self.members if m.layer is layer and m.dim == 0 and m.param.endswith(".weight")]


class ChannelError(UserError, ValueError):
    """A model whose channels cannot be pruned or a channel mask that does not fit it."""


def groups(model):
    """The coupled channel groups of `model`, in graph order. The output layer's outputs (the
    classes) are never a group."""
    return _groups(model, *_graph(model))


def _groups(model, graph, names):
    output_layer = _module(model, _output_weight(model))
    found = []
    for group in graph.get_all_groups(ignored_layers=[output_layer], root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0]
        size = len(root.idxs)
        members = []
        for dep, index in group:
            module = dep.target.module
            if module not in names:
                continue  # a parameter-free op (add, ReLU, pooling) in the trace
            if not isinstance(module, _SUPPORTED):
                raise ChannelError(f"{names[module]}: {type(module).__name__} layers cannot be channel-pruned")
            if len(index) != size:
                raise ChannelError(f"{names[module]}: its channels do not map one-to-one onto {names[root.dep.target.module]}'s")
            members += _members(names[module], module, dep.handler.__name__, tuple(int(i) for i in index))
        found.append(ChannelGroup(name=f"{names[root.dep.target.module]}.weight", size=size, members=tuple(members)))
    return found


def expand(model, channel_groups, keep):
    """The weight mask for channel keep-vectors {group name: bool[size]}: every prunable weight, and
    every bias and BatchNorm parameter of a group, with each pruned channel's slices False."""
    params = dict(model.named_parameters())
    # On the CPU, as every mask is, whatever device the model is on.
    mask = {name: torch.ones(params[name].shape, dtype=torch.bool) for name in model.prunable_kinds()}
    for group in channel_groups:
        pruned = (~keep[group.name]).nonzero().flatten().tolist()
        for member in group.members:
            entry = mask.setdefault(member.param, torch.ones(params[member.param].shape, dtype=torch.bool))
            entry.index_fill_(member.dim, torch.tensor([member.index[j] for j in pruned], dtype=torch.long), False)
    return mask


def kept(channel_groups, mask):
    """{group name: bool[size]}: the channels a weight mask keeps (a channel survives when any of its
    root layer's output weights does)."""
    keep = {}
    for group in channel_groups:
        root = mask[group.name]
        keep[group.name] = root.flatten(1).any(1) if root.dim() > 1 else root
    return keep


def kept_fans(model, mask):
    """{weight: (fan_in, fan_out)} of every prunable layer as the architecture a channel mask
    leaves has it: torch's fans counted over the kept input and output channels only."""
    fans = {}
    for name in model.prunable_kinds():
        keep = mask[name]
        receptive_field = keep[0][0].numel() if keep.dim() > 2 else 1
        outputs, inputs = int(keep.flatten(1).any(1).sum()), int(keep.transpose(0, 1).flatten(1).any(1).sum())
        fans[name] = (inputs * receptive_field, outputs * receptive_field)
    return fans


def is_channel_mask(model, mask):
    """Whether the mask carries parameters besides the prunable weights (biases, BatchNorm), as the
    masks `expand` makes do."""
    return bool(set(mask) - set(model.prunable_kinds()))


def compact(model, mask):
    """A physically smaller copy of `model`: each channel the mask prunes is removed from every
    layer it touches. Its outputs equal the masked model's."""
    small = copy.deepcopy(model).eval()
    graph, names = _graph(small)
    keep = kept(_groups(small, graph, names), mask)
    by_name = {name: module for module, name in names.items()}
    for group_name, group_keep in keep.items():
        pruned = (~group_keep).nonzero().flatten().tolist()
        if pruned:
            root = by_name[group_name.removesuffix(".weight")]
            handler = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
            graph.get_pruning_group(root, handler, idxs=pruned).prune()
    small.train(model.training)
    return small


def shapes(model):
    """{module name: [in, out]} channels of each Conv2d, Linear and BatchNorm2d: with the registry
    name, enough to rebuild a compact model before loading its weights."""
    described = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            described[name] = [module.in_channels, module.out_channels]
        elif isinstance(module, nn.Linear):
            described[name] = [module.in_features, module.out_features]
        elif isinstance(module, nn.BatchNorm2d):
            described[name] = [module.num_features, module.num_features]
    return described


def resize(model, described):
    """Replace the layers of a freshly built `model` by layers with the channels in `described`
    (from `shapes`), so a compact model's state dict loads into it."""
    for name, (channels_in, channels_out) in described.items():
        module = _module(model, name)
        parent_name, _, attribute = name.rpartition(".")
        setattr(_module(model, parent_name), attribute, _resized(module, channels_in, channels_out))
    return model


def _resized(module, channels_in, channels_out):
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            channels_in,
            channels_out,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            bias=module.bias is not None,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(channels_in, channels_out, bias=module.bias is not None)
    return nn.BatchNorm2d(channels_out, eps=module.eps, momentum=module.momentum)


def _members(module_name, module, handler, index):
    if handler == "prune_in_channels":
        return [Member(f"{module_name}.weight", type(module), 1, index)]
    return [
        Member(f"{module_name}.{p}", type(module), 0, index) for p in ("weight", "bias") if getattr(module, p) is not None
    ]


def _graph(model):
    example = torch.zeros(1, *model.input_shape, device=next(model.parameters()).device)
    # The trace runs a forward pass: in train mode it would move BatchNorm's running statistics.
    was_training = model.training
    model.eval()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        model.train(was_training)
    return graph, {module: name for name, module in model.named_modules() if name}


def _output_weight(model):
    return next(name for name, kind in model.prunable_kinds().items() if kind == "output").removesuffix(".weight")


def _module(model, name):
    return model.get_submodule(name) if name else model
