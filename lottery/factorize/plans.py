"""Rank plans: which layers factorize at which rank, and parameter matching (the ranks whose
factors store at most a given number of weights)."""

from lottery.factorize.layers import factorizable, shape, weight_layers


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
    for name, layer in weight_layers(model).items():
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
    found = weight_layers(model)
    for name in sorted(ranks, key=lambda name: -sum(shape(found[name]))):
        m, n = shape(found[name])
        if m + n <= spare and (ranks[name] + 1) * (m + n) < m * n:
            ranks[name] += 1
            spare -= m + n
    return ranks
