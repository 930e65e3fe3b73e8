"""In-round saves (lottery.resume): a training loop stopped part-way resumes from its last save and
ends with the bits of a run that never stopped.

The in-process tests stop each loop right after a chosen save (the save is written, then the loop
is interrupted, as a kill at that moment would leave it) and run the stage again. The last test
kills a real `dvc repro` with SIGKILL past half of a long `train` and times the rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lottery import hparams, paths, pipeline, resume
from tests.conftest import dvc_project, tiny_params
from tests.test_early_bird import eb_params
from tests.test_supermask import SUPERMASK


# Fewer test images and no weight-agnostic evaluation: the loops under test are the training ones.
QUICK = {"data.test_subset": 200, "weight_agnostic.values": []}


class Killed(BaseException):
    """Stands for the end of the process right after a save was written."""


def every_output():
    """The bytes of every file the lineage in the working directory wrote, but the measured latencies,
    the figures and the MLflow run ids."""
    measured = {paths.compression_report(1).parent, paths.compression_plot_data(), paths.lineage_file()}
    files = [p for folder in (paths.MODELS, paths.METRICS, paths.PLOTS) for p in folder.rglob("*") if p.is_file()]
    return {str(p): p.read_bytes() for p in sorted(files) if not measured & {p, p.parent} and p.suffix != ".png"}


def stages_of(hp, until=None):
    """(stage name, step) of every stage of the lineage in the order `dvc repro` runs them, up to
    the stage `until` (None: all)."""
    stages = [("init", lambda: pipeline.init(hp)), ("train", lambda: pipeline.train_dense(hp))]
    for r in range(1, hp.rounds + 1):
        stages += [
            (f"prune@{r}", lambda r=r: pipeline.prune(hp, r)),
            (f"rewind@{r}", lambda r=r: pipeline.rewind(hp, r)),
            (f"retrain@{r}", lambda r=r: pipeline.retrain(hp, r)),
            (f"evaluate@{r}", lambda r=r: pipeline.evaluate(hp, r)),
            (f"compact@{r}", lambda r=r: pipeline.compact(hp, r)),
        ]
        stages += [(f"control@{r}-{c}", lambda r=r, c=c: pipeline.control(hp, r, c)) for c in hp.controls.run]
    stages.append(("report", lambda: pipeline.summarize(hp)))
    names = [name for name, _ in stages]
    return stages[: names.index(until) + 1] if until else stages


def run_with_kills(hp, kills, monkeypatch, until=None):
    """The lineage (up to the stage `until`), each stage in `kills` stopped right after its
    `kills[stage]`-th save and then run again; the iteration each stopped stage resumed from."""
    written = {}
    original = resume.InRoundSaves.save

    def save_then_stop(saves, state):
        original(saves, state)
        stage = saves.path.name.rsplit("-", 1)[0]
        written[stage] = written.get(stage, 0) + 1
        if written[stage] == kills.get(stage):
            raise Killed(stage)

    monkeypatch.setattr(resume.InRoundSaves, "save", save_then_stop)
    resumed = {}
    for stage, step in stages_of(hp, until):
        try:
            step()
        except Killed:
            (left,) = paths.in_round_saves().glob(f"{stage}-*.pt")
            resumed[stage] = torch.load(left, weights_only=True)["iteration"]
            step()
    assert not list(paths.in_round_saves().glob("*")), "a finished stage leaves no save behind"
    return resumed


def lineage_twice(hp, kills, workdir, monkeypatch, until=None):
    """The outputs of `hp`'s lineage (up to the stage `until`) run straight through, and run again
    elsewhere with `kills`; the iteration each stopped stage resumed from."""
    for _, step in stages_of(hp, until):
        step()
    straight = every_output()
    again = workdir / "again"
    again.mkdir()
    (again / "data").symlink_to(workdir / "data")
    monkeypatch.chdir(again)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{again / 'mlflow.db'}")
    monkeypatch.setenv("LOTTERY_SAVE_SECONDS", "1e-9")  # a save after every iteration
    resumed = run_with_kills(hp, kills, monkeypatch, until)
    return straight, every_output(), resumed


def test_train_retrain_and_a_control_resume_mid_round_to_the_same_bits(workdir, make_hp, monkeypatch):
    # Late rewinding at 40: train is stopped after it took θk; retrain and the control between evaluations.
    hp = make_hp(**QUICK, **{"rewind.iteration": 40, "controls.run": ["reinit"], "rounds": hparams.rounds_section(1)})
    kills = {"train": 50, "retrain@1": 5, "control@1-reinit": 13}
    straight, resumed_run, resumed = lineage_twice(hp, kills, workdir, monkeypatch)
    assert resumed == {"train": 50, "retrain@1": 45, "control@1-reinit": 53}
    assert resumed_run == straight


def test_the_early_bird_search_resumes_with_its_mask_history(workdir, make_hp, monkeypatch):
    hp = eb_params(make_hp, **QUICK, **{"early_bird.queue": 3})
    kills = {"train": 50}  # 20 iterations an epoch: stopped with the masks of epochs 1 and 2 drawn
    straight, resumed_run, resumed = lineage_twice(hp, kills, workdir, monkeypatch, until="train")
    assert resumed == {"train": 50}
    # The ticket emerged later, from a FIFO that held masks drawn before the stop.
    assert json.loads(resumed_run[str(paths.early_bird_report())])["epoch"] > 3
    assert resumed_run == straight


def test_a_weight_agnostic_supermask_search_resumes_with_its_scores_and_draws(workdir, make_hp, monkeypatch):
    shared_weights = {**QUICK, "weight_agnostic.values": [-1.0, 1.0]}  # what the search draws from
    hp = make_hp(**SUPERMASK, **shared_weights, **{"supermask.weight_agnostic": True, "rounds": hparams.rounds_section(1)})
    straight, resumed_run, resumed = lineage_twice(hp, {"prune@1": 37}, workdir, monkeypatch, until="prune@1")
    assert resumed == {"prune@1": 37}
    assert resumed_run == straight


def test_a_save_is_resumed_only_by_the_same_computation(workdir, make_hp, monkeypatch):
    monkeypatch.setenv("LOTTERY_SAVE_SECONDS", "1e-9")
    hp = make_hp(**{"rounds": hparams.rounds_section(1)})
    pipeline.init(hp)
    other = make_hp(**{"rounds": hparams.rounds_section(1), "train.lr": 0.002})
    assert resume.saves_for(hp, "train", [paths.init_checkpoint()]).path != resume.saves_for(other, "train", [paths.init_checkpoint()]).path
    assert resume.saves_for(hp, "train", [paths.init_checkpoint()]).path != resume.saves_for(hp, "retrain@1", [paths.init_checkpoint()]).path
    before = resume.saves_for(hp, "train", [paths.init_checkpoint()]).path
    pipeline.init(make_hp(seed=1, **{"rounds": hparams.rounds_section(1)}))  # θ0 of another seed, same file name
    assert resume.saves_for(hp, "train", [paths.init_checkpoint()]).path != before


def test_a_bad_save_interval_is_one_line_naming_the_variable(make_hp, monkeypatch):
    monkeypatch.setenv("LOTTERY_SAVE_SECONDS", "a minute")
    with pytest.raises(resume.UserError, match="LOTTERY_SAVE_SECONDS = 'a minute': must be a number of seconds"):
        resume.saves_for(make_hp(), "train", [])


def test_no_saves_are_written_when_the_interval_is_zero(workdir, make_hp, monkeypatch):
    monkeypatch.setenv("LOTTERY_SAVE_SECONDS", "0")
    written = []
    monkeypatch.setattr(resume.InRoundSaves, "save", lambda saves, state: written.append(saves.path))
    pipeline.run_lineage(make_hp(**{"rounds": hparams.rounds_section(1)}))
    assert written == [] and not paths.in_round_saves().exists()


# --- a real kill -9 of `dvc repro` past half of a long `train` -------------------------------------

# The train is killed at its first save past 80% of it (saves half a second apart): long enough that
# the seconds of CPU any train step spends outside the loop (its store, its set-up) leave a resumed
# train well under the 0.6 of a straight one that the test asks for. Its evaluations are QUICK ones:
# what is timed is the loop, and less outside it leaves the ratio further below 0.6.
LONG_TRAIN = {**QUICK, "train.iterations": 3000, "train.eval_every": 500, "rounds": hparams.rounds_section(1)}
KILLED_PAST = 0.8
TRAIN_OUTPUTS = [paths.trained_weights(0), paths.mask(0), paths.rewind_point(), paths.training_log(0), paths.round_metrics(0)]


def repro(repo, args, times, warm=True, **popen):
    """`dvc repro ARGS` in `repo`, its stages timed into `times` (lottery.stage, LOTTERY_STAGE_TIMES);
    `warm=False`: each stage in a process of its own, without the warm worker."""
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "LOTTERY_STAGE_TIMES": str(times),
        "LOTTERY_SAVE_SECONDS": "0.5",
        "LOTTERY_WARM": "1" if warm else "0",
        "OMP_NUM_THREADS": "1",  # CPU seconds that do not depend on how busy the other cores are
    }
    return subprocess.Popen(["dvc", "repro", *args], cwd=repo, env=env, start_new_session=True, **popen)


def train_cpu_seconds(times):
    """CPU seconds the train stage's step took (lottery.stage records them; start-up left out)."""
    (line,) = [json.loads(line) for line in Path(times).read_text().splitlines() if json.loads(line)["stage"] == "train"]
    return line["step_cpu_seconds"]


def saved_iteration(repo):
    saves = list((repo / ".lottery" / "saves").glob("train-*.pt"))
    return torch.load(saves[0], weights_only=True)["iteration"] if saves else 0


def test_a_train_killed_past_half_resumes_faster_and_bit_identical(tmp_path_factory, mnist_root):
    repo = dvc_project(tmp_path_factory.mktemp("killed"), tiny_params(mnist_root, LONG_TRAIN))
    assert repro(repo, ["init"], repo / "setup.jsonl").wait(timeout=300) == 0  # everything train reads
    assert repro(repo, ["train"], repo / "straight.jsonl").wait(timeout=600) == 0
    straight = {output: (repo / output).read_bytes() for output in TRAIN_OUTPUTS}

    # Without the warm worker: the kill reaches the process that trains, not a worker's fork of it.
    run = repro(repo, ["-f", "train"], repo / "killed.jsonl", warm=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while saved_iteration(repo) < KILLED_PAST * LONG_TRAIN["train.iterations"]:
        assert run.poll() is None and time.monotonic() < deadline, "train ended before it was killed"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    resumed_from = saved_iteration(repo)
    assert not (repo / paths.trained_weights(0)).exists()  # DVC deleted it before the killed run

    assert repro(repo, ["train"], repo / "resumed.jsonl").wait(timeout=600) == 0
    for output, expected in straight.items():
        assert (repo / output).read_bytes() == expected, output
    assert not list((repo / ".lottery" / "saves").glob("*")), "the finished stage removed its save"
    ratio = train_cpu_seconds(repo / "resumed.jsonl") / train_cpu_seconds(repo / "straight.jsonl")
    assert resumed_from >= 0.7 * LONG_TRAIN["train.iterations"] and ratio < 0.6, (resumed_from, ratio)
