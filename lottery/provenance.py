"""Where a result came from: its lineage (the params that matter plus the code that ran), the
git commit of that code, and the environment that computed it.

A lineage is one configuration of code and params: `lineage_id` digests the params' identity (lottery.identity)
together with the digest of every file the stages run (lottery.deps), so a code change starts a
new lineage while a README edit, a new round or a control does not. The git commit and whether
the tree had uncommitted code changes say where to find that code again; the environment (torch,
device, threads) explains a result that does not reproduce bit for bit.
"""

import os
import platform
import subprocess

from lottery import deps, identity

# The parent run's tags that say where a lineage came from (lottery.runs makes the run).
CODE_TAG = "lottery.code"
REPLICATE_TAG = "lottery.replicate_group"
COMMIT_TAG = "lottery.git_commit"
DIRTY_TAG = "lottery.git_dirty"
EXPERIMENT_TAG = "lottery.dvc_experiment"


def lineage_id(hp, root=deps.ROOT):
    """The lineage's name: its identity params and its code."""
    return identity.digest({"params": identity.of(hp), "code": deps.code_digest(root)})


def replicate_group(hp, root=deps.ROOT):
    """The name shared by the lineages that differ from this one in their seed alone."""
    params = {key: value for key, value in identity.of(hp).items() if key != "seed"}
    return identity.digest({"params": params, "code": deps.code_digest(root)})


def git_state(root=deps.ROOT):
    """{'commit': HEAD or '', 'dirty': whether the code the stages run differs from HEAD}."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=all", "--", deps.PACKAGE, deps.SCRIPTS)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "", "dirty": False}
    return {"commit": commit, "dirty": bool(changes)}


def environment(device, processes):
    """What computed a result besides code and params: versions, the device, the CPU's vector
    instructions that torch's kernels use (AVX2 and AVX-512 round differently), CPU threads, the
    GPUs the process was let see, and the data-parallel processes that trained it."""
    import torch

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "processes": processes,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "visible_gpus": visible_gpus(),
    }


def visible_gpus():
    """CUDA_VISIBLE_DEVICES as this process saw it: 'all' when it is unset, 'none' when it is empty
    (the queue's workers each set their own: lottery.queue_workers)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "all" if value is None else value.strip() or "none"


def device_name(device):
    """`cpu`, or a GPU with its model: `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def dvc_experiment():
    """The DVC experiment this process runs in ('' outside `dvc exp run`)."""
    return os.environ.get("DVC_EXP_NAME", "")


def run_tags(hp):
    """A lineage's provenance tags as its parent run is made: its code, its replicate group, the
    git commit (and whether uncommitted code ran) and the DVC experiment."""
    git = git_state()
    return {
        CODE_TAG: deps.code_digest(),
        REPLICATE_TAG: replicate_group(hp),
        COMMIT_TAG: git["commit"],
        DIRTY_TAG: str(git["dirty"]).lower(),
        EXPERIMENT_TAG: dvc_experiment(),
    }


def run_tag_updates(held):
    """The provenance tags that change on a parent run holding tags `held`: a lineage first run from
    uncommitted code names a commit once that code is committed; one first run outside a DVC
    experiment names the experiment that runs it later."""
    updates = {}
    if held.get(DIRTY_TAG) == "true":
        git = git_state()
        if git["commit"] and not git["dirty"]:
            updates = {COMMIT_TAG: git["commit"], DIRTY_TAG: "false"}
    if not held.get(EXPERIMENT_TAG) and dvc_experiment():
        updates[EXPERIMENT_TAG] = dvc_experiment()
    return updates


def _git(root, *args):
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()
