"""Lineages in the MLflow store: list them, show one round by round, diff two, reproduce one.

A lineage is named by its parent run id, its DVC experiment name, its run name, or a prefix
(at least 6 characters) of its parent run id or lineage hash.
"""

import collections
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lottery import deps, hparams, masks, paths, records, terminal, tracking
from lottery.errors import UserError
from lottery.io import load_torch, read_json

ROUND_METRICS = (
    "weights_remaining",
    "test_accuracy_at_early_stop",
    "early_stop_iteration",
    "final_test_accuracy",
    # Absent (None) in lineages without a weight-agnostic evaluation.
    "weight_agnostic_mean_accuracy",
    "weight_agnostic_best_accuracy",
)
# compact@r's deterministic figures, shown and diffed beside them (latency is a measurement: it
# would differ run to run). `reproduce` checks the round metrics files' ROUND_METRICS alone.
COMPRESSION_METRICS = ("compression.parameter_ratio", "compression.flops_speedup")
SHOWN_METRICS = ROUND_METRICS + COMPRESSION_METRICS
KEY_PARAMS = ("model.name", "data.dataset", "prune.strategy", "prune.rate", "rewind.iteration", "seed")
# The params `method` names a lineage by: `lineage list` shows them as its method, not as columns.
METHOD_PARAMS = (
    "prune.strategy",
    "prune.schedule",
    "rewind.target",
    "rewind.iteration",
    "rewind.scratch_budget",
    "early_bird.enabled",
    "factorize.enabled",
    "factorize.spectral_init",
    "factorize.frobenius_decay",
    "supermask.weight_agnostic",
)
STRATEGY_NAMES = {"magnitude": "magnitude", "bn_slimming": "slimming", "l1_filter": "L1 filter", "random": "random"}
# `lineage list`: the columns no terminal is too narrow for.
LISTED = ("run", "method", "rounds", "remaining", "accuracy")


class LineageError(UserError, RuntimeError):
    """A lineage that cannot be found, or cannot be compared or reproduced."""


@dataclass
class LineageRecord:
    """A lineage as the tracking store holds it: its parent run and its round and control runs."""

    parent: object  # the MLflow parent Run
    branches: dict  # (round, control or None) -> Run

    @property
    def name(self):
        return self.parent.data.tags.get("mlflow.runName", self.parent.info.run_id)

    @property
    def rounds(self):
        return sorted(r for r, control in self.branches if control is None)

    def metrics(self, round_, control=None):
        run = self.branches.get((round_, control))
        return {key: current(run, key) for key in SHOWN_METRICS} if run else None

    def ranks(self, round_):
        """A factorized round's {layer: rank} (its prune@r `rank.<layer>` params); {} for a mask."""
        run = self.branches.get((round_, None))
        params = run.data.params if run else {}
        return {key.removeprefix("rank."): int(value) for key, value in params.items() if key.startswith("rank.")}


class Store:
    """Read access to one MLflow experiment's lineages."""

    def __init__(self, uri, experiment):
        with tracking.opened(uri, experiment) as client:
            self.client = client
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise LineageError(f"no MLflow experiment {experiment!r} at {uri}")
        self.experiment_id = found.experiment_id

    def _search(self, condition):
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=condition, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def parents(self, replicate_group=None):
        """Every lineage's parent run, or only those of one replicate group (same params but seed)."""
        condition = f"tags.`{tracking.KIND_TAG}` = 'lineage'"
        if replicate_group:
            condition += f" and tags.`{tracking.REPLICATE_TAG}` = '{replicate_group}'"
        return self._search(condition)

    def find(self, name):
        """The lineage named `name` (see the module docstring); a clear error if none or several."""
        matches = [
            parent
            for parent in self.parents()
            if name
            in (
                parent.info.run_id,
                parent.data.tags.get("mlflow.runName"),
                parent.data.tags.get(tracking.EXPERIMENT_TAG),
            )
            or (
                len(name) >= 6
                and (parent.info.run_id.startswith(name) or parent.data.tags.get(tracking.LINEAGE_TAG, "").startswith(name))
            )
        ]
        if not matches:
            raise LineageError(f"{name!r}: no lineage has that run id, DVC experiment, run name or hash")
        if len(matches) > 1:
            ids = ", ".join(p.info.run_id for p in matches)
            raise LineageError(f"{name!r}: names {len(matches)} lineages ({ids}); use a parent run id")
        return self.load(matches[0])

    def load(self, parent):
        runs = self._search(f"tags.`{tracking.LINEAGE_TAG}` = '{parent.data.tags[tracking.LINEAGE_TAG]}'")
        branches = {
            (int(run.data.tags[tracking.ROUND_TAG]), run.data.tags.get(tracking.CONTROL_TAG)): run
            for run in runs
            if tracking.ROUND_TAG in run.data.tags
        }
        return LineageRecord(parent=parent, branches=branches)

    def mask(self, lineage, round_):
        """The round's mask from its run's `mask.pt` artifact, or None if the run has none."""
        run = lineage.branches.get((round_, None))
        if run is None or "mask.pt" not in {a.path for a in self.client.list_artifacts(run.info.run_id)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run.info.run_id, "mask.pt", tmp)
            return load_torch(local)


def current(run, key):
    """A run's current value of metric `key`; None where it has none (a NaN point: no file holds
    it any more, lottery.tracking)."""
    value = run.data.metrics.get(key)
    return None if value is None or math.isnan(value) else value


def summary_row(lineage):
    """What `lineage list` shows of a lineage."""
    tags, params = lineage.parent.data.tags, lineage.parent.data.params
    last = lineage.rounds[-1] if lineage.rounds else None
    final = lineage.metrics(last) if last is not None else {}
    return {
        "parent_run_id": lineage.parent.info.run_id,
        "name": lineage.name,
        "dvc_experiment": tags.get(tracking.EXPERIMENT_TAG, ""),
        "git_commit": tags.get(tracking.COMMIT_TAG, "")[:10] + ("+dirty" if tags.get(tracking.DIRTY_TAG) == "true" else ""),
        "code": tags.get(tracking.CODE_TAG, "")[:8],
        "method": method(params),
        **{key: params.get(key) for key in KEY_PARAMS},
        "rounds": last,
        "weights_remaining": final.get("weights_remaining"),
        "test_accuracy_at_early_stop": final.get("test_accuracy_at_early_stop"),
    }


def method(params):
    """The method that a lineage's params (its parent run's, strings as MLflow holds them) describe,
    in a few words: IMP, one-shot magnitude, slimming, L1 filter, random, Early-Bird, supermask
    (weight-agnostic), factorized SI+FD (SI, FD, plain); then how a round starts where it is not
    θ0: rewind k, fine-tune, Scratch-E or Scratch-B."""
    return ", ".join(part for part in (_pruning(params), _start(params)) if part)


def _pruning(params):
    if "factorize.spectral_init" in params:
        parts = [name for name, key in (("SI", "factorize.spectral_init"), ("FD", "factorize.frobenius_decay")) if params.get(key) == "True"]
        return f"factorized {'+'.join(parts) or 'plain'}"
    if params.get("early_bird.enabled") == "True":
        return "Early-Bird"
    strategy = params.get("prune.strategy", "?")
    if strategy == "edge_popup":
        return "supermask, weight-agnostic" if params.get("supermask.weight_agnostic") == "True" else "supermask"
    oneshot = params.get("prune.schedule") == "oneshot"
    if strategy == "magnitude" and not oneshot:
        return "IMP"
    name = STRATEGY_NAMES.get(strategy, strategy)
    return f"one-shot {name}" if oneshot else name


def _start(params):
    target = params.get("rewind.target", "init")
    if target == "init":
        iteration = params.get("rewind.iteration", "0")
        return "" if iteration == "0" else f"rewind {iteration}"
    if target == "scratch":
        return "Scratch-B" if params.get("rewind.scratch_budget") == "flops" else "Scratch-E"
    return "fine-tune"


def differing(param_sets):
    """The keys whose value (or presence) is not the same in every one of `param_sets`; KEY_PARAMS
    first, then by name."""
    keys = set().union(*param_sets) if param_sets else set()
    found = [key for key in keys if len({params.get(key) for params in param_sets}) > 1]
    return sorted(found, key=lambda key: (KEY_PARAMS.index(key) if key in KEY_PARAMS else len(KEY_PARAMS), key))


def listing(lineages):
    """`lineage list` as rows: each lineage's run id (its first 8 characters name it), DVC
    experiment and method; then what differs between the lineages listed: their params (for a
    single lineage, KEY_PARAMS; '-' where a lineage has no such param), controls, commit and code;
    then its last round, weights remaining and test accuracy at early stop. Returns (rows, the
    columns in display order); of those not in LISTED, the earlier matter more."""
    params = [found.parent.data.params for found in lineages]
    varying = differing(params) if len(lineages) > 1 else list(KEY_PARAMS)
    shown_params = [key for key in varying if key not in METHOD_PARAMS]
    rows = []
    for found, values in zip(lineages, params):
        summary = summary_row(found)
        rows.append(
            {
                "run": summary["parent_run_id"][:8],
                "experiment": summary["dvc_experiment"],
                "method": method(values),
                **{key: values.get(key, "-") for key in shown_params},
                "controls": found.parent.data.tags.get("lottery.controls", ""),
                "commit": summary["git_commit"],
                "code": summary["code"],
                "rounds": summary["rounds"],
                "remaining": summary["weights_remaining"],
                "accuracy": summary["test_accuracy_at_early_stop"],
            }
        )
    provenance = [key for key in ("controls", "commit", "code") if len({row[key] for row in rows}) > 1]
    return rows, ["run", "experiment", "method", *shown_params, *provenance, "rounds", "remaining", "accuracy"]


def round_table(lineage):
    """Per round: the ticket's metrics (a factorized round's ranks too), and each control's test
    accuracy at early stop."""
    controls = sorted({control for _, control in lineage.branches if control})
    rows = []
    for round_ in lineage.rounds:
        row = {"round": round_, **lineage.metrics(round_)}
        ranks = lineage.ranks(round_)
        if ranks:
            row["ranks"] = " ".join(f"{layer}:{rank}" for layer, rank in ranks.items())
        for control in controls:
            control_metrics = lineage.metrics(round_, control)
            row[f"{control}.test_accuracy_at_early_stop"] = (
                control_metrics["test_accuracy_at_early_stop"] if control_metrics else None
            )
        rows.append(row)
    return rows


def mask_overlap(mask_a, mask_b):
    """Per layer: Jaccard index of the kept weights and normalised Hamming distance of the masks."""
    overlap = {}
    for name in sorted(set(mask_a) & set(mask_b)):
        a, b = mask_a[name].bool(), mask_b[name].bool()
        if a.shape != b.shape:
            continue
        union = int((a | b).sum())
        overlap[name] = {
            "jaccard": int((a & b).sum()) / union if union else 1.0,
            "hamming": int((a ^ b).sum()) / a.numel(),
        }
    return overlap


def diff(store, a, b, progress=terminal.no_bar):
    """Params that differ; per round, metrics side by side with deltas, per-layer mask overlap, and
    per-layer ranks where either lineage is factorized. `progress(label, total)`: a terminal.Bar
    stepped once per round (whose masks are read from the store)."""
    params_a, params_b = a.parent.data.params, b.parent.data.params
    params = {
        key: {"a": params_a.get(key), "b": params_b.get(key)}
        for key in sorted(set(params_a) | set(params_b))
        if params_a.get(key) != params_b.get(key)
    }
    code_a, code_b = (side.parent.data.tags.get(tracking.CODE_TAG) for side in (a, b))
    rounds = []
    common = sorted(set(a.rounds) & set(b.rounds))
    with progress("reading masks", len(common)) as bar:
        for round_ in common:
            rounds.append(_diff_round(store, a, b, round_))
            bar.step(f"round {round_}")
    return {
        "a": a.parent.info.run_id,
        "b": b.parent.info.run_id,
        "params": params,
        "code": None if code_a == code_b else {"a": code_a, "b": code_b},
        "rounds": rounds,
        "rounds_only_in_a": sorted(set(a.rounds) - set(b.rounds)),
        "rounds_only_in_b": sorted(set(b.rounds) - set(a.rounds)),
    }


def _diff_round(store, a, b, round_):
    """One round of `diff`: metrics with deltas, mask overlap (None if a mask is not reachable), ranks."""
    metrics_a, metrics_b = a.metrics(round_), b.metrics(round_)
    row = {"round": round_, "metrics": {}}
    for key in SHOWN_METRICS:
        va, vb = metrics_a[key], metrics_b[key]
        row["metrics"][key] = {"a": va, "b": vb, "delta": None if va is None or vb is None else vb - va}
    mask_a, mask_b = store.mask(a, round_), store.mask(b, round_)
    row["masks"] = mask_overlap(mask_a, mask_b) if mask_a is not None and mask_b is not None else None
    ranks_a, ranks_b = a.ranks(round_), b.ranks(round_)
    row["ranks"] = {layer: {"a": ranks_a.get(layer), "b": ranks_b.get(layer)} for layer in sorted({*ranks_a, *ranks_b})}
    return row


def differs(result):
    """Whether a diff shows any difference at all."""
    metric_change = any(m["delta"] for r in result["rounds"] for m in r["metrics"].values())
    mask_change = any(o["hamming"] for r in result["rounds"] for o in (r["masks"] or {}).values())
    return bool(result["params"] or result["code"] or metric_change or mask_change or result["rounds_only_in_a"] or result["rounds_only_in_b"])


def reproduce(store, lineage, project_root, keep=False, progress=terminal.no_bar):
    """Re-run a lineage from its git commit and exact params in a fresh worktree with `dvc repro`,
    then compare every round's metrics and mask hash with the recorded ones, and name what differs
    between the recorded run and this one: the code, and each round's training environment.
    `progress(label, total)`: a terminal.Bar stepped as each stage of `dvc repro` starts."""
    commit = lineage.parent.data.tags.get(tracking.COMMIT_TAG)
    if not commit:
        raise LineageError(f"{lineage.name}: its runs recorded no git commit, so its code cannot be restored")
    workdir = Path(tempfile.mkdtemp(prefix="lottery-reproduce-"))
    worktree = workdir / "project"
    _run(["git", "worktree", "add", "--detach", str(worktree), commit], project_root)
    try:
        params = store.client.download_artifacts(lineage.parent.info.run_id, records.PARAMS_ARTIFACT, str(workdir))
        shutil.copyfile(params, worktree / "params.yaml")
        hp = hparams.load(worktree / "params.yaml")
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",  # a store of its own: the original stays as it was
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(worktree),  # the lineage's own code, not this checkout's
        }
        _repro(worktree, env, progress)
        return compare(lineage, worktree, hp) | {"workdir": str(workdir) if keep else None, "commit": commit}
    finally:
        if not keep:
            _run(["git", "worktree", "remove", "--force", str(worktree)], project_root)
            shutil.rmtree(workdir, ignore_errors=True)


def compare(lineage, root, hp):
    """Recorded vs re-computed: each round's metrics and mask hash; and `differences`, what else
    differs between the two runs (code, torch, device, threads, processes, Python) to explain a mismatch."""
    checks = []
    for round_ in range(hp.rounds + 1):
        recorded = lineage.branches.get((round_, None))
        fresh = read_json(root / paths.round_metrics(round_))
        for key in ROUND_METRICS:
            expected = current(recorded, key) if recorded else None
            reproduced = fresh.get(key)
            if expected is None and reproduced is None:
                continue  # a metric this lineage does not measure
            match = expected is not None and reproduced is not None and abs(expected - reproduced) <= 1e-9
            checks.append({"round": round_, "what": key, "recorded": expected, "reproduced": reproduced, "match": match})
        model_mask = load_torch(root / paths.mask(round_))
        expected = recorded.data.tags.get(records.MASK_DIGEST_TAG) if recorded else None
        digest = masks.digest(model_mask)
        checks.append({"round": round_, "what": "mask_sha256", "recorded": expected, "reproduced": digest,
                       "match": expected == digest})
    return {"match": all(c["match"] for c in checks), "checks": checks, "differences": differences(lineage, root, hp)}


def differences(lineage, root, hp):
    """What the recorded lineage and the run in `root` did not share: the code (its digest, and
    whether the recorded run used uncommitted code) and, per round, the training environment."""
    found = []
    tags = lineage.parent.data.tags
    recorded_code, code = tags.get(tracking.CODE_TAG), deps.code_digest(Path(root))
    if recorded_code != code:
        found.append({"round": None, "what": "code", "recorded": recorded_code, "reproduced": code})
    if tags.get(tracking.DIRTY_TAG) == "true":
        commit = tags.get(tracking.COMMIT_TAG, "")[:10]
        found.append({"round": None, "what": "uncommitted code", "recorded": f"on top of {commit}", "reproduced": "none"})
    for round_ in range(hp.rounds + 1):
        run = lineage.branches.get((round_, None))
        recorded = {
            key[len(records.ENVIRONMENT_TAG) :]: value
            for key, value in (run.data.tags.items() if run else [])
            if key.startswith(records.ENVIRONMENT_TAG)
        }
        log = read_json(root / paths.training_log(round_))
        reproduced = {key: str(value) for key, value in log.get("environment", {}).items()}
        for key in sorted(set(recorded) | set(reproduced)):
            if recorded.get(key) != reproduced.get(key):
                found.append({"round": round_, "what": key, "recorded": recorded.get(key), "reproduced": reproduced.get(key)})
    return found


# How `dvc repro` says that it starts a stage, or skips one (unchanged, or restored from its run cache).
STAGE_LINE = re.compile(r"^(?:Running stage|Stage) '([^']+)'")


def _repro(worktree, env, progress):
    """`dvc repro` in `worktree`, a step of the progress bar per stage; its last lines in the error
    if it fails."""
    stages = _run(["dvc", "stage", "list", "--name-only"], worktree, env=env).split()
    command = ["dvc", "repro"]
    last = collections.deque(maxlen=3)
    with progress("dvc repro", len(stages)) as bar, subprocess.Popen(
        command, cwd=worktree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            if line.strip():
                last.append(line.strip())
            started = STAGE_LINE.match(line)
            if started:
                bar.step(started.group(1))
    if process.returncode != 0:
        raise LineageError(f"{' '.join(command)} failed in {worktree}: {' | '.join(last)}")


def _run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise LineageError(f"{' '.join(command)} failed in {cwd}: {' | '.join(detail)}")
    return result.stdout
