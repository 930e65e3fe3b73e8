"""Supermask search on frozen weights: edge-popup (Ramanujan et al. 2020), the empirical method
behind Malach et al.'s "pruning is all you need".

Every prunable weight gets a score. Each step the forward pass uses, per layer, the weights whose
|score| is among the layer's top ones (exactly as many as layerwise pruning keeps), and the
gradient reaches the scores straight through the selection: d loss / d |score| = d loss /
d (effective weight) × weight. The weights, biases and every other parameter never change; only
the scores train (SGD with momentum, cosine decay to 0, weight decay on the scores). Scores start
like Kaiming-uniform weights, U(-1/√fan_in, 1/√fan_in).

With `weight_agnostic`, each step's kept weights are one shared value w drawn from the given values
(times the frozen weight's sign with signs 'init'), biases 0, as the weight-agnostic evaluation
(lottery.weight_agnostic) measures them: the mask is trained to work for all of them at once.
"""

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lottery import data
from lottery.pruning import selection


def initial_scores(weight, generator):
    fan_in = weight[0].numel()
    bound = 1 / math.sqrt(fan_in)
    return (torch.rand(weight.shape, generator=generator) * 2 - 1) * bound


def cosine_rate(lr, iteration, iterations):
    return lr * 0.5 * (1 + math.cos(math.pi * iteration / iterations))


def search(model, mask, drop, splits, supermask_hp, batch_size, seed, generator, device, shared=None, saves=None):
    """The mask that keeps, of each layer's kept weights in `mask`, all but its `drop[layer]`
    lowest |scores| after score training on `model`'s frozen weights (which it leaves untouched).
    `shared`: (values, signs mode) for a weight-agnostic search. `saves` (lottery.resume): resume
    from its save, save the scores, optimizer and generator when due and at the end."""
    frozen = {name: tensor.detach().to(device) for name, tensor in model.named_parameters()}
    frozen.update({name: tensor.to(device) for name, tensor in model.named_buffers()})
    model = model.to(device).train()
    candidates = {name: keep.to(device) for name, keep in mask.items()}
    scores = {name: initial_scores(frozen[name], generator).to(device).requires_grad_() for name in mask}
    optimizer = torch.optim.SGD(
        scores.values(), lr=supermask_hp.lr, momentum=supermask_hp.momentum, weight_decay=supermask_hp.weight_decay
    )
    start = _resume(saves, device, scores, optimizer, generator)
    train = splits.train.to(device)
    base, biases = _base_weights(frozen, candidates, shared)
    indices = data.batches(seed, len(train), batch_size, start, device)
    for iteration, index in zip(range(start, supermask_hp.iterations), indices):
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(supermask_hp.lr, iteration, supermask_hp.iterations)
        value = shared[0][int(torch.randint(len(shared[0]), (), generator=generator))] if shared else 1.0
        weights = {**frozen, **biases, **effective_weights(base, scores, candidates, drop, value)}
        images = splits.augment(train.x[index], seed, iteration, batch_size) if splits.augment else train.x[index]
        loss = F.cross_entropy(functional_call(model, weights, (images,)), train.y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if saves and (saves.due() or iteration + 1 == supermask_hp.iterations):
            saves.save(_state(iteration + 1, scores, optimizer, generator))
    model.cpu()
    return {name: _kept(scores[name].abs(), candidates[name], drop[name]).cpu() for name in mask}


def _state(next_iteration, scores, optimizer, generator):
    return {"iteration": next_iteration, "scores": scores, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}


def _resume(saves, device, scores, optimizer, generator):
    """The first iteration to run: 0, or where the search's save left off (its state restored)."""
    saved = saves.load(device) if saves else None
    if not saved:
        return 0
    with torch.no_grad():
        for name, score in scores.items():
            score.copy_(saved["scores"][name])
    optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(saved["generator"])
    return saved["iteration"]


def _kept(magnitude, candidates, drop):
    return selection.keep_top(magnitude.detach(), candidates, drop)


def effective_weights(base, scores, candidates, drop, value):
    """{layer: value · base · (its kept weights)}, differentiable in the scores (straight through)."""
    # keep + (|s| - |s|.detach()) is exactly `keep` in the forward pass and passes the gradient to
    # |s|, so a score whose weight helps grows in magnitude, whatever its sign.
    effective = {}
    for name, score in scores.items():
        magnitude = score.abs()
        keep = _kept(magnitude, candidates[name], drop[name]).to(score.dtype)
        effective[name] = value * base[name] * (keep + (magnitude - magnitude.detach()))
    return effective


def _base_weights(frozen, candidates, shared):
    """The per-weight factors the selection multiplies, and the biases to override: the frozen
    weights themselves, or for a weight-agnostic search their signs (or 1) with biases 0, times
    the layer's Kaiming scale √(2 / fan_in). With zero biases a positive per-layer scale cannot
    change a prediction (lottery.weight_agnostic), but it keeps the loss, and so the scores'
    gradients, in range: unscaled, a shared weight of 2 on a random half of LeNet-300-100's
    weights gives logits of median size 55,000."""
    if shared is None:
        return {name: frozen[name] for name in candidates}, {}
    signed = shared[1] == "init"
    scaled = {
        name: (frozen[name].sign() if signed else torch.ones_like(frozen[name])) * math.sqrt(2 / frozen[name][0].numel())
        for name in candidates
    }
    biases = {name: torch.zeros_like(tensor) for name, tensor in frozen.items() if name.endswith("bias")}
    return scaled, biases
