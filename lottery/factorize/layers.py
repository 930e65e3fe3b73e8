"""The factorized layers and a model rebuilt with them.

A Linear layer's matrix is its weight. A Conv2d kernel (out, in, kh, kw) is the (out·kh)×(in·kw)
matrix M[(o, a), (i, b)] = W[o, i, a, b]; its factorized form is a 1×kw conv from `in` to r
channels (Vᵀ), then a kh×1 conv from r to `out` channels (U), which computes what the dense conv
computes when UVᵀ = M.

A factorized model's architecture is its ranks ({layer name: r}, `ranks`), which checkpoints
record (lottery.checkpoints). Its prunable weights are the factors, so a round's mask over them
(every weight kept) names the ranks too (`ranks_of_mask`).
"""

import torch
from torch import nn

from lottery.models.base import draw_layer

INNER, OUTER = "inner", "outer"


class Factorized(nn.Module):
    """A layer W = UVᵀ run as `inner` (Vᵀ, no bias) then `outer` (U, with the layer's bias)."""

    def forward(self, x):
        return self.outer(self.inner(x))

    @property
    def rank(self):
        return self.inner.weight.shape[0]

    @property
    def shape(self):
        """(m, n) of the dense layer's matrix."""
        return self.outer.weight.shape[0] * self.outer.weight.shape[2:].numel(), self.inner.weight[0].numel()

    def factors(self):
        """(U, V) as matrices: views of the two layers' weights."""
        return self.u_of(self.outer.weight), self.v_of(self.inner.weight)

    @torch.no_grad()
    def set_factors(self, u, v):
        self.outer.weight.copy_(self.outer_weight(u))
        self.inner.weight.copy_(self.inner_weight(v))


class FactorizedLinear(Factorized):
    def __init__(self, dense, rank):
        super().__init__()
        self.inner = nn.Linear(dense.in_features, rank, bias=False)
        self.outer = nn.Linear(rank, dense.out_features, bias=dense.bias is not None)

    @staticmethod
    def u_of(outer_weight):
        return outer_weight

    @staticmethod
    def v_of(inner_weight):
        return inner_weight.T

    def outer_weight(self, u):
        return u

    def inner_weight(self, v):
        return v.T

    def dense(self):
        """The dense Linear layer this one computes."""
        layer = nn.Linear(self.inner.in_features, self.outer.out_features, bias=self.outer.bias is not None)
        _copy_dense(layer, matrix(self), self.outer.bias)
        return layer


class FactorizedConv2d(Factorized):
    def __init__(self, dense, rank):
        super().__init__()
        if dense.groups != 1 or dense.dilation != (1, 1) or dense.padding_mode != "zeros" or isinstance(dense.padding, str):
            raise ValueError(f"{dense}: only ungrouped, undilated convs with zero padding of fixed size factorize")
        (kh, kw), (sh, sw), (ph, pw) = dense.kernel_size, dense.stride, dense.padding
        self.inner = nn.Conv2d(dense.in_channels, rank, (1, kw), stride=(1, sw), padding=(0, pw), bias=False)
        self.outer = nn.Conv2d(rank, dense.out_channels, (kh, 1), stride=(sh, 1), padding=(ph, 0), bias=dense.bias is not None)

    @staticmethod
    def u_of(outer_weight):  # (out, r, kh, 1) -> (out·kh, r)
        out, rank, kh, _ = outer_weight.shape
        return outer_weight[..., 0].permute(0, 2, 1).reshape(out * kh, rank)

    @staticmethod
    def v_of(inner_weight):  # (r, in, 1, kw) -> (in·kw, r)
        return inner_weight.reshape(inner_weight.shape[0], -1).T

    def outer_weight(self, u):
        out, rank, kh, _ = self.outer.weight.shape
        return u.reshape(out, kh, rank).permute(0, 2, 1).unsqueeze(-1)

    def inner_weight(self, v):
        return v.T.reshape(self.inner.weight.shape)

    def dense(self):
        """The dense Conv2d layer this one computes."""
        layer = nn.Conv2d(
            self.inner.in_channels,
            self.outer.out_channels,
            (self.outer.kernel_size[0], self.inner.kernel_size[1]),
            stride=(self.outer.stride[0], self.inner.stride[1]),
            padding=(self.outer.padding[0], self.inner.padding[1]),
            bias=self.outer.bias is not None,
        )
        out, _, kh, kw = layer.weight.shape
        kernel = matrix(self).reshape(out, kh, -1, kw).permute(0, 2, 1, 3)
        _copy_dense(layer, kernel, self.outer.bias)
        return layer


FACTORIZED = {nn.Linear: FactorizedLinear, nn.Conv2d: FactorizedConv2d}


@torch.no_grad()
def _copy_dense(layer, weight, bias):
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)


def matrix(layer):
    """The layer's weight as the m×n matrix it factorizes (UVᵀ for a factorized layer)."""
    if isinstance(layer, Factorized):
        u, v = layer.factors()
        return (u @ v.T).detach()
    weight = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):  # (out, in, kh, kw) -> (out·kh, in·kw)
        out, _, kh, _ = weight.shape
        return weight.permute(0, 2, 1, 3).reshape(out * kh, -1)
    return weight


def shape(layer):
    """(m, n) of the layer's matrix."""
    if isinstance(layer, Factorized):
        return layer.shape
    if isinstance(layer, nn.Conv2d):
        out, channels_in, kh, kw = layer.weight.shape
        return out * kh, channels_in * kw
    return tuple(layer.weight.shape)


def weight_layers(model):
    """{name: layer} of every Linear, Conv2d and factorized layer, in order (a factorized layer's
    two halves are not listed apart)."""
    found, inside = {}, ()
    for name, module in model.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(module, Factorized):
            found[name], inside = module, (f"{name}.",)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            found[name] = module
    return found


def factorizable(model):
    """{name: layer} of the layers a factorization may touch: all of `weight_layers` but the output
    layer (the last Linear)."""
    found = weight_layers(model)
    output = [name for name, layer in found.items() if isinstance(layer, nn.Linear)][-1]
    return {name: layer for name, layer in found.items() if name != output}


def spectral_factors(weight_matrix, rank):
    """(U, V) = (A_r Σ_r^½, B_r Σ_r^½) from the SVD W = AΣBᵀ: UVᵀ is W's best rank-r approximation
    (Eckart-Young), and U and V share its singular values evenly."""
    a, sigma, b_transposed = torch.linalg.svd(weight_matrix.double(), full_matrices=False)
    root = sigma[:rank].sqrt()
    u = a[:, :rank] * root
    v = b_transposed[:rank].T * root
    return u.to(weight_matrix.dtype), v.to(weight_matrix.dtype)


def factorize(model, ranks, spectral=True, generator=None, init="glorot"):
    """`model` (dense or factorized) rebuilt in place at `ranks` ({layer: rank}; a factorizable
    layer absent from it becomes dense). Factors come from each layer's current matrix by truncated
    SVD (`spectral`: spectral initialization of a fresh draw, or compression of trained weights),
    or are drawn independently from `init` with `generator` (the paper's "plain" ablation). Biases
    and every other parameter are kept."""
    for name, layer in factorizable(model).items():
        rank = ranks.get(name)
        if rank == (layer.rank if isinstance(layer, Factorized) else None):
            continue  # already this shape: its weights are the ones to keep
        dense = layer.dense() if isinstance(layer, Factorized) else layer
        replacement = dense if rank is None else _factorized(dense, rank, spectral, generator, init)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, replacement)
    return model


def _factorized(dense, rank, spectral, generator, init):
    layer = FACTORIZED[type(dense)](dense, rank)
    if spectral:
        layer.set_factors(*spectral_factors(matrix(dense), rank))
    else:
        draw_layer(layer.inner, generator, init)
        draw_layer(layer.outer, generator, init)
    if dense.bias is not None:
        with torch.no_grad():
            layer.outer.bias.copy_(dense.bias)
    return layer.to(dense.weight.device)


def restructure(model, ranks):
    """A freshly built dense `model` given the factorized layers of `ranks` (values to be loaded)."""
    for name, rank in ranks.items():
        dense = model.get_submodule(name)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, FACTORIZED[type(dense)](dense, rank))
    return model


def ranks(model):
    """{layer: rank} of the model's factorized layers."""
    return {name: layer.rank for name, layer in weight_layers(model).items() if isinstance(layer, Factorized)}


def ranks_of_mask(mask):
    """{layer: rank} that a mask over a factorized model's weights names (the rows of each `inner`)."""
    suffix = f".{INNER}.weight"
    return {name.removesuffix(suffix): keep.shape[0] for name, keep in mask.items() if name.endswith(suffix)}


def factorized_layers(model):
    """The model's factorized layers, in order."""
    return [layer for layer in weight_layers(model).values() if isinstance(layer, Factorized)]


def to_mask(model, mask, spectral, generator, init):
    """`model` factorized in place at the ranks `mask` names (ranks_of_mask), so the mask fits it;
    a mask of a dense architecture leaves a dense model as it is. See `factorize`."""
    return factorize(model, ranks_of_mask(mask), spectral=spectral, generator=generator, init=init)
