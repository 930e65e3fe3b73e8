"""bench/arms.py, the per-arm results of the claim benches: a run stopped part-way keeps the arms it
finished, the next run does only the rest, a changed setting reruns its arm (and the finished arms
it builds on), and seed processes writing the one file side by side lose nothing.

The runs are a small driver on the benches' own machinery (run_seed_processes, run_arms,
ArmsFile), whose arms log that they ran and return at once, or block until stopped."""

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import argparse, os, sys, time
    from pathlib import Path

    sys.path.insert(0, {bench!r})
    from arms import Arm, ArmsFile, arm_key, run_arms, run_seed_processes

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--names", nargs="+", default=["a", "b", "c"])
    parser.add_argument("--block", default="")  # this arm sleeps until the process is stopped
    parser.add_argument("--size", type=int, default=1)  # the settings of arm c
    parser.add_argument("--max-arms", type=int)
    args = parser.parse_args()
    arms_file = ArmsFile(args.out / "bench_arms.json")

    def work(name):
        def run():
            with (args.out / "ran.log").open("a") as log:
                log.write(f"{{args.seed}} {{name}} {{os.getpid()}}\\n")
            if name == args.block:
                time.sleep(120)
            return {{"name": name, "seed": args.seed}}
        return run

    if args.seed is None:
        options = ["--names", *args.names, "--block", args.block, "--size", str(args.size)]
        if args.max_arms is not None:
            options += ["--max-arms", str(args.max_arms)]
        finished = run_seed_processes(__file__, args.seeds, [str(args.out), *options])
        print("finished" if finished else "stopped", flush=True)
    else:
        arms = []
        for name in args.names:
            # c trains from b's work: it needs b
            needs = (arm_key({{"seed": args.seed, "arm": "b"}}),) if name == "c" else ()
            settings = {{"size": args.size if name == "c" else 1}}
            arms.append(Arm({{"seed": args.seed, "arm": name}}, settings, work(name), 0.1, needs))
        run_arms(arms_file, arms, "cpu (test driver)", args.max_arms, f"[seed {{args.seed}}] ")
    """
).format(bench=str(ROOT / "bench"))


@pytest.fixture
def bench(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()

    def run(*options):
        done = subprocess.run([sys.executable, str(script), str(out), *options], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(*options):
        return subprocess.Popen([sys.executable, str(script), str(out), *options], stdout=subprocess.PIPE, text=True)

    return script, out, run, start


def arms_in(out):
    path = out / "bench_arms.json"
    return json.loads(path.read_text())["arms"] if path.exists() else {}


def ran(out):
    """[(seed, arm, pid)] in the order the arms started; the log is emptied."""
    log = out / "ran.log"
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return [(int(lines[i]), lines[i + 1], int(lines[i + 2])) for i in range(0, len(lines), 3)]


def wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.05)


def test_a_stopped_run_keeps_its_finished_arm_and_the_next_does_only_the_rest(bench):
    _, out, run, start = bench
    parent = start("--block", "b")
    wait_for(lambda: len(arms_in(out)) == 1)
    wait_for(lambda: (out / "ran.log").exists() and " b " in (out / "ran.log").read_text())
    parent.send_signal(signal.SIGTERM)  # what `timeout` sends when a GPU lease's time is up
    stdout, _ = parent.communicate(timeout=30)
    assert "stopped" in stdout
    first = arms_in(out)
    assert list(first) == ["seed=0/arm=a"]
    assert first["seed=0/arm=a"]["result"] == {"name": "a", "seed": 0}
    started = ran(out)
    assert [name for _, name, _ in started] == ["a", "b"]
    with pytest.raises(ProcessLookupError):  # the seed process went with its parent
        os.kill(started[-1][2], 0)

    run()
    assert [name for _, name, _ in ran(out)] == ["b", "c"]
    second = arms_in(out)
    assert sorted(second) == ["seed=0/arm=a", "seed=0/arm=b", "seed=0/arm=c"]
    assert second["seed=0/arm=a"] == first["seed=0/arm=a"]  # kept as it was, not run again

    run()
    assert ran(out) == []
    assert arms_in(out) == second


def test_a_changed_setting_reruns_its_arm_after_the_arms_it_needs(bench):
    _, out, run, _ = bench
    run()
    assert [name for _, name, _ in ran(out)] == ["a", "b", "c"]
    before = arms_in(out)

    run("--size", "2")  # c's settings change; c needs b, which this run's process has not done
    assert [name for _, name, _ in ran(out)] == ["b", "c"]
    after = arms_in(out)
    assert after["seed=0/arm=c"]["settings"] == {"size": 2}
    assert before["seed=0/arm=c"]["settings"] == {"size": 1}
    assert after["seed=0/arm=a"] == before["seed=0/arm=a"]

    run("--size", "2")
    assert ran(out) == []


def test_max_arms_stops_each_seed_after_that_many_pending_arms(bench):
    _, out, run, _ = bench
    stdout = run("--max-arms", "1")
    assert "stopping after 1 arm(s): 2 still to do" in stdout  # the seed process's line
    assert sorted(arms_in(out)) == ["seed=0/arm=a"]
    run("--max-arms", "1")
    assert sorted(arms_in(out)) == ["seed=0/arm=a", "seed=0/arm=b"]


def test_seed_processes_side_by_side_lose_no_arm(bench):
    _, out, run, _ = bench
    names = [f"n{index}" for index in range(40)]
    run("--seeds", "0", "1", "2", "--names", *names)
    assert sorted(arms_in(out)) == sorted(f"seed={seed}/arm={name}" for seed in range(3) for name in names)


@pytest.mark.parametrize("bench_script, arms", [("rethinking_lr.py", 9), ("early_bird_fmnist.py", 7), ("factorized.py", 20)])
def test_gpu_presets_make_valid_params_for_every_arm(tmp_path, monkeypatch, capsys, bench_script, arms):
    """--plan builds every arm's params (hparams checks included) without training anything; one
    seed (another seed changes only `seed`). The script runs as `python SCRIPT --plan ...` would run
    it, in this process: a process of its own would spend seconds importing what this one has."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", ""))  # the bench sets it: put back after the test
    argv = [str(ROOT / "bench" / bench_script), "--plan", "--preset", "gpu", "--seeds", "0", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (None, 0), capsys.readouterr().err
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  to do")]
    assert len(lines) == arms
    assert all(float(line.split("~")[1].split()[0]) > 0 for line in lines)
    assert not list(tmp_path.iterdir())  # a plan writes nothing


def test_a_run_cut_short_reports_beside_the_complete_report_not_over_it():
    sys.path.insert(0, str(ROOT / "bench"))
    from arms import report_stem

    arms = ["seed=0/arm=a", "seed=0/arm=b"]
    assert report_stem("factorized_gpu", {"seed=0/arm=a": {}}, arms) == "factorized_gpu_partial"
    assert report_stem("factorized_gpu", dict.fromkeys(arms, {}), arms) == "factorized_gpu"
