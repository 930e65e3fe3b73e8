import pytest
import torch

from lottery import controls, masks, pipeline, training
from lottery.models import catalog


@pytest.fixture
def ticket():
    theta = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    generator = torch.Generator().manual_seed(1)
    mask = {name: torch.rand(keep.shape, generator=generator) < 0.3 for name, keep in masks.ones(theta).items()}
    spec = {"name": "lenet_300_100", "input_shape": [1, 28, 28], "num_classes": 10, "width": 1.0}
    return theta, spec, mask


def build(name, ticket, same_sign=False, seed=0, round_=1):
    theta, spec, mask = ticket
    return controls.build(name, theta, spec, mask, seed, round_, same_sign)


@pytest.mark.parametrize("name", sorted(controls.REGISTRY))
def test_every_control_keeps_the_tickets_per_layer_sparsity_and_leaves_the_ticket_alone(ticket, name):
    theta, _, mask = ticket
    before = ({k: v.clone() for k, v in theta.state_dict().items()}, {k: v.clone() for k, v in mask.items()})
    start, control_mask = build(name, ticket)
    for layer, keep in mask.items():
        assert int(control_mask[layer].sum()) == int(keep.sum()), layer
    pipeline.check_pruned_weights_are_zero(start, control_mask)
    assert all(torch.equal(theta.state_dict()[k], before[0][k]) for k in before[0])
    assert all(torch.equal(mask[k], before[1][k]) for k in mask)


def test_reinit_draws_new_weights_on_the_same_mask(ticket):
    theta, _, mask = ticket
    start, control_mask = build("reinit", ticket)
    assert all(torch.equal(control_mask[k], mask[k]) for k in mask)
    new, old = start.state_dict(), theta.state_dict()
    for layer, keep in mask.items():
        assert not bool((new[layer][keep] == old[layer][keep]).any()), layer
        assert new[layer][keep].std().item() == pytest.approx(old[layer].std().item(), rel=0.1)  # same distribution


def test_random_sparse_keeps_theta_on_a_different_mask(ticket):
    theta, _, mask = ticket
    start, control_mask = build("random_sparse", ticket)
    for layer, keep in mask.items():
        overlap = (control_mask[layer] & keep).float().sum() / keep.sum()
        assert 0.2 < overlap.item() < 0.4  # independent of the ticket: ~ its 30% density
        kept = control_mask[layer]
        assert torch.equal(start.state_dict()[layer][kept], theta.state_dict()[layer][kept])


def test_reinit_from_ticket_draws_only_the_tickets_own_initial_values(ticket):
    theta, _, mask = ticket
    start, control_mask = build("reinit_from_ticket", ticket)
    for layer, keep in mask.items():
        pool = set(theta.state_dict()[layer][keep].tolist())
        drawn = start.state_dict()[layer][keep]
        assert set(drawn.tolist()) <= pool
        assert not torch.equal(drawn, theta.state_dict()[layer][keep])


def test_same_sign_keeps_every_weights_sign(ticket):
    theta, _, mask = ticket
    start, _ = build("reinit_from_ticket", ticket, same_sign=True)
    for layer, keep in mask.items():
        original = theta.state_dict()[layer][keep]
        drawn = start.state_dict()[layer][keep]
        assert torch.equal(drawn.sign(), original.sign())
        assert set(drawn.abs().tolist()) <= set(original.abs().tolist())


def test_controls_are_seeded_per_round_and_reproducible(ticket):
    a, _ = build("reinit", ticket, round_=1)
    b, _ = build("reinit", ticket, round_=1)
    c, _ = build("reinit", ticket, round_=2)
    assert torch.equal(a.state_dict()["layers.1.weight"], b.state_dict()["layers.1.weight"])
    assert not torch.equal(a.state_dict()["layers.1.weight"], c.state_dict()["layers.1.weight"])


def test_warmup_reaches_the_base_rate_at_k_and_milestones_decay(make_hp):
    hp = make_hp(**{"train.warmup_iterations": 10, "train.milestones": [30, 50], "train.gamma": 0.5, "train.lr": 0.1})
    rates = [training.learning_rate(hp.train, i) for i in range(60)]
    assert rates[0] == 0.0
    assert rates[5] == pytest.approx(0.05)
    assert rates[9] < 0.1 and rates[10] == pytest.approx(0.1)
    assert rates[29] == pytest.approx(0.1) and rates[30] == pytest.approx(0.05) and rates[50] == pytest.approx(0.025)


def test_training_applies_the_schedule(mnist_root, make_hp):
    from lottery import data

    splits = data.load(make_hp().data, mnist_root)
    # After iteration 1 the rate drops a millionfold: the run must stay close to one plain step.
    decayed_hp = make_hp(**{"train.milestones": [1], "train.gamma": 1e-6}).train
    one_step_hp = make_hp(**{"train.iterations": 1, "train.eval_every": 1}).train
    decayed, one_step, full = (catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0) for _ in range(3))
    training.train(decayed, masks.ones(decayed), splits, decayed_hp, seed=0)
    training.train(one_step, masks.ones(one_step), splits, one_step_hp, seed=0)
    training.train(full, masks.ones(full), splits, make_hp().train, seed=0)
    theta = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0).state_dict()
    moved = lambda model: (model.state_dict()["layers.1.weight"] - theta["layers.1.weight"]).abs().sum().item()
    assert moved(decayed) == pytest.approx(moved(one_step), rel=1e-3)
    assert moved(decayed) < moved(full) / 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"controls.run": ["reinit", "shuffle"]}, "controls.run = 'shuffle': unknown"),
        ({"controls.run": ["reinit", "reinit"]}, "names a control twice"),
        ({"controls.run": "reinit"}, "controls.run = 'reinit': must be a list"),
        ({"train.warmup_iterations": 60}, "train.warmup_iterations = 60: must be in [0, train.iterations)"),
        ({"train.milestones": [40, 20]}, "train.milestones = [40, 20]: must increase strictly"),
        ({"train.gamma": 0}, "train.gamma = 0.0: must be in (0, 1]"),
        ({"prune.schedule": "gradual"}, "prune.schedule = 'gradual': unknown"),
    ],
)
def test_bad_issue_3_params_are_named(make_hp, overrides, message):
    from lottery.errors import ParamsError

    with pytest.raises(ParamsError) as err:
        make_hp(**overrides)
    assert message in str(err.value)
