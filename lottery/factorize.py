"""Low-rank factorized layers (Khodak et al. 2021): a layer's weight matrix W (m×n) stored as
two factors U (m×r) and V (n×r), W = UVᵀ, and run as two smaller layers.

A Linear layer's matrix is its weight. A Conv2d kernel (out, in, kh, kw) is the (out·kh)×(in·kw)
matrix M[(o, a), (i, b)] = W[o, i, a, b]; its factorized form is a 1×kw conv from `in` to r
channels (Vᵀ), then a kh×1 conv from r to `out` channels (U), which computes what the dense conv
computes when UVᵀ = M.

Which layers: every Linear and Conv2d but the output layer, at rank r = max(1, round(scale ·
min(m, n))) (`rank_plan`; parameter matching may give a layer one more, `matched_ranks`). A layer whose factors would store at least as many weights as it does (r(m+n) ≥ mn)
stays dense. BatchNorm, biases (the second factor keeps the layer's) and every other layer stay
as they are.

A factorized model's architecture is its ranks ({layer name: r}, `ranks`), which checkpoints
record (lottery.checkpoints). Its prunable weights are the factors, so a round's mask over them
(every weight kept) names the ranks too (`ranks_of_mask`).
"""

import torch
from torch import nn

from lottery import masks
from lottery.pruning import driver, strategies
from lottery.errors import ParamsError
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


def layers(model):
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
    """{name: layer} of the layers a factorization may touch: all of `layers` but the output layer
    (the last Linear)."""
    found = layers(model)
    output = [name for name, layer in found.items() if isinstance(layer, nn.Linear)][-1]
    return {name: layer for name, layer in found.items() if name != output}


def rank_plan(model, scale):
    """{layer: rank} at `scale` of each layer's full rank, for the layers whose factors store fewer
    weights than the dense layer; the others stay dense (absent)."""
    plan = {}
    for name, layer in factorizable(model).items():
        m, n = shape(layer)
        rank = max(1, round(scale * min(m, n)))
        if rank * (m + n) < m * n:
            plan[name] = rank
    return plan


def stored_weights(model, ranks):
    """How many weights the model's layers store with these ranks (every Linear and Conv2d weight,
    the output layer's too; biases and BatchNorm not counted, as masks do not count them)."""
    total = 0
    for name, layer in layers(model).items():
        m, n = shape(layer)
        total += ranks[name] * (m + n) if name in ranks else m * n
    return total


def matched_ranks(model, target_weights):
    """(scale, ranks) storing `target_weights` weights at most: parameter matching. The scale is the
    largest whose plan fits (bisection: stored weights never fall as the scale grows). Layers of
    one shape step together, which can leave many weights under the target, so each layer then
    takes one rank more while that still fits (_topped_up). ValueError if even rank 1 everywhere
    stores more."""
    lowest = stored_weights(model, rank_plan(model, 0.0))
    if lowest > target_weights:
        raise ValueError(f"{target_weights} weights: fewer than rank 1 in every factorizable layer stores ({lowest})")
    low, high = 0.0, 1.0
    if stored_weights(model, rank_plan(model, high)) <= target_weights:
        return high, rank_plan(model, high)
    for _ in range(60):  # 2^-60: far finer than one rank step of any layer
        middle = (low + high) / 2
        if stored_weights(model, rank_plan(model, middle)) <= target_weights:
            low = middle
        else:
            high = middle
    return low, _topped_up(model, rank_plan(model, low), target_weights)


def _topped_up(model, ranks, target_weights):
    """`ranks` with one rank more for each layer that still fits under the target, the layers with
    the most weights per rank first."""
    ranks, spare = dict(ranks), target_weights - stored_weights(model, ranks)
    found = layers(model)
    for name in sorted(ranks, key=lambda name: -sum(shape(found[name]))):
        m, n = shape(found[name])
        if m + n <= spare and (ranks[name] + 1) * (m + n) < m * n:
            ranks[name] += 1
            spare -= m + n
    return ranks


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
    return {name: layer.rank for name, layer in layers(model).items() if isinstance(layer, Factorized)}


def ranks_of_mask(mask):
    """{layer: rank} that a mask over a factorized model's weights names (the rows of each `inner`)."""
    suffix = f".{INNER}.weight"
    return {name.removesuffix(suffix): keep.shape[0] for name, keep in mask.items() if name.endswith(suffix)}


def sparsity_report(model, mask):
    """masks.sparsity_report against the dense architecture: a factorized layer is reported under
    its dense weight's name, with the dense layer's weights, the factors' as kept, and its rank.
    For a model without factorized layers, exactly masks.sparsity_report."""
    report = masks.sparsity_report(mask, model.prunable_kinds())
    factorized = ranks(model)
    if not factorized:
        return report
    found, kinds = layers(model), model.prunable_kinds()
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


def factorized_layers(model):
    """The model's factorized layers, in order."""
    return [layer for layer in layers(model).values() if isinstance(layer, Factorized)]


def factor_parameters(model):
    """The factors' weights: Frobenius decay replaces plain weight decay on them."""
    return [param for layer in factorized_layers(model) for param in (layer.inner.weight, layer.outer.weight)]


@torch.no_grad()
def add_frobenius_decay_gradient(factorized, strength):
    """Add the gradient of Frobenius decay, (strength/2)·‖UVᵀ‖²_F, to each factor's gradient of the
    `factorized` layers (factorized_layers, found once per training rather than every step):
    strength·U(VᵀV) for U and strength·V(UᵀU) for V. Built from r×r products, it never forms the
    m×n matrix UVᵀ."""
    for layer in factorized:
        u, v = layer.factors()
        layer.outer.weight.grad.add_(layer.outer_weight(u @ (v.T @ v)), alpha=strength)
        layer.inner.weight.grad.add_(layer.inner_weight(v @ (u.T @ u)), alpha=strength)


def to_mask(model, mask, spectral, generator, init):
    """`model` factorized in place at the ranks `mask` names (ranks_of_mask), so the mask fits it;
    a mask of a dense architecture leaves a dense model as it is. See `factorize`."""
    return factorize(model, ranks_of_mask(mask), spectral=spectral, generator=generator, init=init)


def check_params(hp, model):
    """A factorized round stores as many weights as the round's weight-pruned ticket would keep
    (lottery.pruning.driver.kept_weights); what only applies to masks is refused rather than ignored."""
    if not hp.factorize.enabled:
        return
    needs = {
        "prune.granularity": (hp.prune.granularity, "weight", "it matches the weights a weight-pruned ticket keeps"),
        "controls.run": (hp.controls.run, [], "the controls retrain a mask's sparsity pattern"),
        "weight_agnostic.values": (hp.weight_agnostic.values, [], "it evaluates masks of θ0's weights"),
    }
    for key, (value, wanted, reason) in needs.items():
        if value != wanted:
            raise ParamsError(f"{key} = {value!r}: factorize.enabled trains factorized layers and {reason}; use {wanted!r}")
    if strategies.REGISTRY[hp.prune.strategy].learns_scores:
        raise ParamsError(f"prune.strategy = {hp.prune.strategy!r}: searches a mask; factorize.enabled trains factorized layers")
    if hp.rewind.target == "finetune" and not hp.factorize.spectral_init:
        raise ParamsError(
            "factorize.spectral_init = false: rewind.target 'finetune' factorizes the trained weights by truncated SVD; "
            "plain factors would discard them (use 'init' or 'scratch')"
        )
    if hp.rewind.target == "scratch" and hp.rewind.scratch_budget == "flops":
        raise ParamsError("rewind.scratch_budget = 'flops': Scratch-B stretches a mask's budget; use 'same' with factorize.enabled")
    target = driver.kept_weights(hp.prune, model, hp.rounds, seed=0)
    try:
        matched_ranks(model, target)
    except ValueError as err:
        raise ParamsError(f"prune.rate = {hp.prune.rate}: round {hp.rounds}'s ticket keeps {err}") from None
