"""Data-parallel training through torchrun: a tiny lineage trained by 2 CPU processes (Gloo)
through the real `dvc repro`, against the same lineage trained by 1 (its stages run in-process)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lottery import checkpoints, data, distributed, hparams, identity, paths, training, validation
from lottery.models import catalog
from lottery.errors import ParamsError
from tests.conftest import PROJECT, lineage_in_process, reproduced_repo, sh, store_view

# One round and one control: the train, retrain and control stages all run data-parallel. No
# weight-agnostic evaluation: no test here reads it.
LINEAGE = {"rounds": hparams.rounds_section(1), "controls.run": ["reinit"], "compact.latency_repeats": 2, "weight_agnostic.values": []}
BRANCHES = [(0, None), (1, None), (1, "reinit")]


@pytest.fixture(scope="module")
def repos(tmp_path_factory, mnist_root):
    """The lineage of one process, its stages run in this process (what is compared is their outputs
    and runs), and the same lineage of two processes through the real `dvc repro`."""
    with lineage_in_process(tmp_path_factory.mktemp("one_process"), mnist_root, LINEAGE) as single:
        with reproduced_repo(
            tmp_path_factory, mnist_root, "two_processes", {**LINEAGE, "distributed.processes_per_node": 2}
        ) as parallel:
            yield single, parallel


def test_two_gloo_processes_draw_the_one_process_masks_and_metrics(repos):
    single, parallel = repos
    for round_, control in BRANCHES:
        one = torch.load(single / paths.mask(round_, control), weights_only=True)
        two = torch.load(parallel / paths.mask(round_, control), weights_only=True)
        assert one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)
        # The same steps up to the order in which the gradient's float sums are added. Adam
        # divides by the gradient's own scale, so where a gradient nearly cancels that rounding
        # moves a weight by a full step: after 60 steps the reinit control's weights differ by
        # up to 0.009, the ticket's by 2e-5, and the metrics agree within these tolerances.
        metrics_one = json.loads((single / paths.round_metrics(round_, control)).read_text())
        metrics_two = json.loads((parallel / paths.round_metrics(round_, control)).read_text())
        assert metrics_two["final_test_accuracy"] == pytest.approx(metrics_one["final_test_accuracy"], abs=0.005)
        assert metrics_two["final_test_loss"] == pytest.approx(metrics_one["final_test_loss"], rel=0.01)
        log = json.loads((parallel / paths.training_log(round_, control)).read_text())
        assert log["environment"]["processes"] == 2


def test_two_gloo_processes_train_exactly_the_sharded_gradient_of_one_process(repos, mnist_root):
    """Bit for bit: round 0 of the 2-process run equals one process that, at every step, takes the
    gradient of each half of the batch (with one thread, as each rank has) and averages the two,
    as DDP does. So the difference from the 1-process run is only where float sums round."""
    _, parallel = repos
    hp = validation.load(parallel / "params.yaml")
    model, _ = checkpoints.load_model(parallel / paths.init_checkpoint())
    train = data.load(hp.data, mnist_root).train
    optimizer = training.make_optimizer(hp.train, model)
    order = data.batches(hp.seed, len(train), hp.train.batch_size, 0, torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(hp.train.iterations):
            optimizer.zero_grad(set_to_none=True)
            for half in next(order).chunk(2):
                F.cross_entropy(model(train.x[half]), train.y[half]).backward()
            for parameter in model.parameters():
                parameter.grad.div_(2)
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    trained = torch.load(parallel / paths.trained_weights(0), weights_only=True)["state_dict"]
    assert all(torch.equal(trained[name], value) for name, value in model.state_dict().items())


def test_only_rank_0_logs_one_run_per_branch_and_a_rerun_is_a_no_op(repos):
    single, parallel = repos
    runs = {}
    for repo in repos:
        # store_view fails on two runs of one branch: a second rank logging would make them
        runs[repo] = store_view(f"sqlite:///{repo / 'mlflow.db'}", "lottery")
    assert runs[single].keys() == runs[parallel].keys()
    round_1 = runs[parallel][("round", "1", None)]
    assert round_1["status"] == "FINISHED" and round_1["tags"]["lottery.env.processes"] == "2"
    rerun = sh(parallel, "dvc", "repro")
    assert "Running stage" not in rerun


# Each rank: a model and a split of 2,500 examples (3 evaluation batches), evaluated alone (before
# joining the group) and then as one of two ranks; a batch sliced; a decision only rank 0 takes.
RANK_SCRIPT = """
import json, sys, torch
from lottery import data, distributed, training
split = data.Split(torch.randn(2500, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(2500) % 10)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
alone = training.evaluate(model, split)
torch.distributed.init_process_group("gloo")
rank = distributed.rank()
line = json.dumps({
    "rank": rank,
    "shard": torch.arange(6)[distributed.own_rows(6)].tolist(),
    "decision": distributed.rank0_decides(rank == 0, torch.device("cpu")),
    "alone": alone,
    "together": training.evaluate(model, split),
})
# One write per rank: both ranks share torchrun's stdout, and with unbuffered output (PYTHONUNBUFFERED)
# print writes the line and its newline apart, so the other rank's line can land between them.
sys.stdout.write(line + "\\n")
sys.stdout.flush()
torch.distributed.destroy_process_group()
"""


def test_ranks_slice_each_batch_follow_rank_0_and_sum_their_evaluations(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["shard"] for r in ranks] == [[0, 1, 2], [3, 4, 5]]
    assert [r["decision"] for r in ranks] == [True, True]  # rank 1 said False
    # Rank 0 measured batches 1 and 3, rank 1 batch 2; the sums are the whole split's.
    alone, together = ranks[0]["alone"], ranks[0]["together"]
    assert ranks[1]["together"] == together and together[1] == alone[1] and together[0] == pytest.approx(alone[0], rel=1e-6)


def test_a_synchronized_tree_shares_every_tensor_and_swaps_only_batchnorm():
    model = catalog.build("vgg11", (1, 28, 28), 10, seed=0, width=0.125)
    tree = distributed._synchronized(model)
    assert {id(p) for p in tree.parameters()} == {id(p) for p in model.parameters()}
    assert {id(b) for b in tree.buffers()} == {id(b) for b in model.buffers()}
    kinds = lambda net: [type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert set(kinds(tree)) == {nn.SyncBatchNorm} and set(kinds(model)) == {nn.BatchNorm2d}
    assert len(kinds(tree)) == len(kinds(model))
    model.eval(), tree.eval()
    example = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(example), tree(example))
    lenet = catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)
    assert distributed._synchronized(lenet) is lenet  # nothing to swap: the model itself


def test_torchrun_runs_one_node_standalone_and_several_at_the_rendezvous(make_hp):
    one = make_hp(**{"distributed.processes_per_node": 2}).distributed
    command = distributed.torchrun_command(one, "stages.retrain", ["--round", "1"], "retrain-1")
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "stages.retrain", "--round", "1"]
    several = make_hp(**{"distributed.nodes": 3, "distributed.rendezvous": "node0:29400"}).distributed
    command = distributed.torchrun_command(several, "stages.train", [], "train")
    assert "--nnodes=3" in command and "--rdzv-endpoint=node0:29400" in command and "--rdzv-id=train" in command
    assert "--standalone" not in command


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"distributed.processes_per_node": 0}, "distributed.processes_per_node = 0"),
        ({"distributed.nodes": 2}, "distributed.rendezvous = '': 2 nodes meet at a host:port"),
        ({"distributed.nodes": 2, "distributed.rendezvous": "node0"}, "distributed.rendezvous = 'node0'"),
        ({"distributed.processes_per_node": 7}, "train.batch_size = 60: must be a multiple of the 7 data-parallel"),
        (
            {"distributed.processes_per_node": 2, "model.name": "vgg11", "model.width": 0.125, "train.device": "cpu"},
            "vgg11 has BatchNorm, and torch's SyncBatchNorm runs on GPUs only",
        ),
    ],
)
def test_distributed_params_are_refused_in_one_line(make_hp, overrides, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        make_hp(**overrides)
    assert "\n" not in str(refused.value)


def test_the_number_of_processes_does_not_rename_the_lineage(make_hp):
    assert identity.params_hash(make_hp(**{"distributed.processes_per_node": 2})) == identity.params_hash(make_hp())
