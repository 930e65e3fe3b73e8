#!/usr/bin/env bash
# Issue 27's checks on a lent GPU machine, in one call of the device tool. Prepare here first
# (`bash tools/device/prepare.sh`: wheels in .whl/, MNIST and a git binary in .device/), then
#   run(command="bash tools/device/gpu_check.sh", carry=[".whl", ".device"], timeout_s=600)
#
# The arms, in this order (name arms as arguments to run only those, e.g. `... gpu_check.sh suite`):
#   setup        installs the wheels, names the GPU and the versions, builds data/mnist (always runs)
#   test_cuda    pytest tests/test_cuda.py and the queue workers' GPU test -v
#   repro        bench/repro_time.py (the default experiment's `dvc repro`, timed, train.device auto,
#                beside bench/bare_lth.py), then a forced `dvc repro -f` of the same project while
#                the suite runs, and tools/device/compare_runs.py on the two runs' tensors and metrics;
#                where DVC cannot run, the `lineage` arm instead
#   lineage      the default lineage in process twice (lottery.pipeline.run_lineage), compared alike
#   suite        the rest of the test suite, one worker per core, as much as the time left allows
#   train_speed  bench/train_speed.py (it holds itself to the CPU)
# Each arm writes its log under $OUT as it ends, and one line to $OUT/summary.txt (status, seconds),
# so a call cut short keeps what finished. The files: summary.txt env.log test_cuda.log repro.log
# repro_time.json suite.log train_speed.log train_speed.json (the tool returns 8 files at most).
# Every arm runs under `timeout`, and all of them within GPU_CHECK_BUDGET_S seconds (default 520).
# GPU_CHECK_SMOKE=1 shrinks the pipeline runs and train_speed to seconds: a dry run on a CPU.
set -uo pipefail
: "${OUT:?OUT is unset: the device tool sets it; for a dry run, OUT=/tmp/gpu-check-out}"
cd "$(dirname "$0")/../.." || exit 1
BUDGET_S=${GPU_CHECK_BUDGET_S:-520}
SMOKE=${GPU_CHECK_SMOKE:-0}
WORK=/tmp/gpu-check            # scratch: the pipeline's project copies, helper programs
SITE=$WORK/site                # the wheels, where python3's own environment refuses them
DEADLINE=$((SECONDS + BUDGET_S))
CUDA=0                         # set by setup: whether torch finds a GPU
# Warm stage workers (lottery/warm.py) that the runs start stop a minute after their last stage.
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false LOTTERY_WARM_IDLE=60
mkdir -p "$OUT"

# Seconds the next arm may take: at most `cap`, and never past the deadline.
allowance() {
    local left=$((DEADLINE - SECONDS))
    echo $((left < $1 ? left : $1))
}

# `record ARM STATUS START`: one line of summary.txt.
record() {
    printf '%-12s %-40s %4d s\n' "$1" "$2" $((SECONDS - $3)) | tee -a "$OUT/summary.txt"
}

# `status RC`: what a command's exit code says, `timeout` included.
status() {
    case $1 in
        0) echo passed ;;
        124 | 137) echo "timed out" ;;
        *) echo "failed (exit $1)" ;;
    esac
}

# `run_arm NAME CAP MIN LOG COMMAND...`: COMMAND under `timeout`, its output into LOG; skipped,
# with the reason, when fewer than MIN seconds are left.
run_arm() {
    local name=$1 cap=$2 min=$3 log=$4 start=$SECONDS limit rc
    shift 4
    limit=$(allowance "$cap")
    if ((limit < min)); then
        record "$name" "skipped: ${limit} s left, needs ${min}" "$start"
        return 1
    fi
    echo "== $name: $* (limit ${limit} s)" | tee -a "$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    record "$name" "$(status $rc)${ARM_NOTE:+; $ARM_NOTE}" "$start"
    return $rc
}

setup() {
    local start=$SECONDS rc
    rm -rf "$WORK" && mkdir -p "$WORK/bin"
    setup_steps >>"$OUT/env.log" 2>&1
    rc=$?
    CUDA=$(python3 -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
    record setup "$(status $rc)" "$start"
    return $rc
}

setup_steps() {
    echo "== python3: $(command -v python3) ($(python3 -V 2>&1)); $(nproc) cores; $(free -g | awk '/Mem:/ {print $2}') GiB"
    # Into python3's own environment, as `pip install` puts them: the project finds console scripts
    # beside the interpreter (the tests start `mlflow server` so) and gives stage processes a
    # PYTHONPATH of its own (tests/conftest.py's run_stage), which would hide a --target folder. The
    # wheels are only packages the image lacks (tools/device/wheels.txt), so none of its own changes.
    local wheels=(.whl/*.whl)
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "${wheels[@]}"; then
        echo "wheels: ${#wheels[@]} installed into $(python3 -c 'import sys; print(sys.prefix)')"
    else
        echo "wheels: python3's environment refused them; into $SITE instead, on PYTHONPATH and PATH"
        echo "(tests that set PYTHONPATH or look for scripts beside the interpreter will not find them)"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 1
        export PYTHONPATH=$SITE
    fi
    # `dvc` and `mlflow` lie beside python3's interpreter, which need not be on PATH itself.
    PATH=$WORK/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$SITE/bin:$PATH
    # DVC runs stages as `python -m stages.<name>`: `python` must be the interpreter that has torch.
    if [ "$(python -c 'import sys; print(sys.prefix)' 2>/dev/null)" != "$(python3 -c 'import sys; print(sys.prefix)')" ]; then
        printf '#!/bin/sh\nexec %s "$@"\n' "$(python3 -c 'import sys; print(sys.executable)')" >"$WORK/bin/python"
        chmod +x "$WORK/bin/python"
        echo "python: not python3's interpreter here; $WORK/bin/python runs python3's"
    fi
    git_binary
    echo "== nvidia-smi"
    timeout 30 nvidia-smi || echo "nvidia-smi: not here or failed"
    echo "== torch"
    python3 - <<'EOF'
import platform
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, Python {platform.python_version()}")
if torch.cuda.is_available():
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"cuda:{index} {torch.cuda.get_device_name(index)}, capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB")
else:
    print("no CUDA: torch.cuda.is_available() is False; the GPU arms will say so")
EOF
    echo "== versions"
    python3 - <<'EOF'
import importlib.metadata as metadata

names = ["torch", "torchvision", "numpy", "scipy", "pandas", "pyarrow", "matplotlib", "PyYAML", "pytest", "pytest-xdist",
         "pytest-timeout", "protobuf", "click", "packaging", "dvc", "mlflow", "SQLAlchemy", "alembic", "torch-pruning"]
for name in names:
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
    python3 -c "import dvc.cli, mlflow.pytorch, mlflow.store.tracking.sqlalchemy_store, torch_pruning" || return 1
    echo "imports: dvc, mlflow (SQLite store, pytorch), torch_pruning"
    echo "dvc: $(dvc --version 2>&1)"
    # For information: the requirements the image and the wheels leave unmet. Expected: what
    # tools/device/wheels.txt leaves out (never imported here, or inside mlflow's own wheel).
    echo "== pip check"
    python3 -m pip check 2>&1 | head -n 40
    mnist
}

# The project's own git where the image has one; else the binary .device/ carries (DVC's projects and
# the tests' repositories are git repositories: DVC needs git's metadata, and the tests run `git`).
git_binary() {
    if git --version 2>/dev/null; then
        return 0
    fi
    echo "git: not on this machine; using the one carried in .device/git.xz"
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" .device/git.xz "$WORK/bin/git"
    chmod +x "$WORK/bin/git"
    hash -r  # forget where this shell last found a git
    git --version
}

# data/mnist as the `data` stage makes it (digests checked, tensor file written), from the raw
# files carried in .device/, with data.source local: the machine reaches no registry.
mnist() {
    mkdir -p "$WORK/mnist"
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .device/mnist-raw.tar.xz "$WORK/mnist"
    python3 - "$WORK/mnist" <<'EOF'
import sys

from lottery import data, hparams, paths

local = hparams.DataHparams(dataset="mnist", source="local", local_root=sys.argv[1], validation_size=5000,
                            train_subset=0, test_subset=0, augmentation="none")
data.fetch(local, paths.dataset_root("mnist"))
print(f"data: {paths.dataset_root('mnist')} built from {sys.argv[1]} (raw files' sha256 checked)")
EOF
}

test_cuda() {
    local note=""
    ((CUDA)) || note="no CUDA here: its tests skip"
    ARM_NOTE=$note run_arm test_cuda 150 30 "$OUT/test_cuda.log" python3 -m pytest tests/test_cuda.py \
        tests/test_queue_workers.py::test_on_cuda_each_worker_environment_shows_its_own_gpu_alone -v -rs -p no:cacheprovider
}

# The suite less tests/test_cuda.py, one test file per worker (--dist loadfile, as `make test`).
suite_command() {
    local workers=$1 per_test=()
    python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 240)
    echo python3 -m pytest tests -n "$workers" --dist loadfile -v -rfEs -p no:cacheprovider "${per_test[@]}" --ignore=tests/test_cuda.py
}

suite() {
    # shellcheck disable=SC2046  # the command's words, split on purpose
    run_arm suite 420 60 "$OUT/suite.log" $(suite_command "$(nproc)")
}

smoke_flag() {
    ((SMOKE)) && echo "$1"
}

repro() {
    local log=$OUT/repro.log project
    mkdir -p "$WORK/bench"
    # The first run: the bench's own fresh project (git + DVC, params.yaml's values, MNIST local),
    # `dvc repro data`, then `dvc repro` of the rest timed, a no-op repro, and bare_lth.py.
    # shellcheck disable=SC2046
    run_arm repro_time 330 120 "$log" \
        env TMPDIR="$WORK/bench" python3 bench/repro_time.py --keep --output "$OUT/repro_time.json" $(smoke_flag --smoke)
    local kept=("$WORK"/bench/lottery-repro-*/project)  # the one scratch folder the bench kept
    project=${kept[0]}
    if [ ! -f "$project/metrics/summary.json" ]; then
        echo "no finished dvc repro from the bench: the lineage arm runs it in process instead" | tee -a "$log"
        lineage
        suite
        return
    fi
    # The second run: every stage again (`dvc repro -f`) in the same project, while the suite uses
    # the cores (this run is compared, not timed); then the two runs side by side.
    mkdir -p "$WORK/first"
    cp -a "$project/models" "$project/metrics" "$WORK/first/"
    cp "$project/dvc.lock" "$WORK/first/dvc.lock"
    local limit rc seconds
    limit=$(($(allowance 300) - 20))  # the comparison's 20 s kept
    if ((limit < 60)); then
        record repro_forced "skipped: ${limit} s left, needs 60" "$SECONDS"
        return 1
    fi
    (
        start=$SECONDS
        # The bench's environment for its pipeline (bench/repro_time.py environment()); unbuffered, so a
        # run stopped by its timeout still shows how far it got.
        cd "$project" &&
            PATH="$(dirname "$(python3 -c 'import sys; print(sys.executable)')"):$PATH" PYTHONPATH="$project${PYTHONPATH:+:$PYTHONPATH}" \
                MLFLOW_TRACKING_URI="sqlite:///$project/mlflow.db" PYTHONUNBUFFERED=1 timeout -k 10 "$limit" dvc repro -f
        echo "$? $((SECONDS - start))" >"$WORK/forced.status"
    ) >"$WORK/forced.log" 2>&1 &
    # Four cores fewer than the machine has, and 20 s left for the comparison: the forced run and the
    # comparison are the checks that must finish.
    # shellcheck disable=SC2046
    run_arm suite $(($(allowance 300) - 20)) 60 "$OUT/suite.log" $(suite_command $(($(nproc) > 5 ? $(nproc) - 4 : 1)))
    wait
    read -r rc seconds <"$WORK/forced.status"
    {
        echo "== dvc repro -f (beside the suite; the end of its output)"
        tail -n 60 "$WORK/forced.log"
    } >>"$log"
    record repro_forced "$(status "$rc") (beside the suite)" $((SECONDS - seconds))
    ((rc == 0)) || return "$rc"
    # shellcheck disable=SC2046
    run_arm compare 120 10 "$log" python3 tools/device/compare_runs.py "$WORK/first" "$project" $(expect_cuda)
}

# On a GPU machine, train.device auto must have trained every branch on CUDA.
expect_cuda() {
    ((CUDA)) && echo "--expect-device cuda"
}

lineage() {
    local log=$OUT/repro.log
    # shellcheck disable=SC2046
    run_arm lineage_1 240 60 "$log" python3 tools/device/run_lineage.py "$WORK/lineage/first" $(smoke_flag --smoke) &&
        run_arm lineage_2 240 60 "$log" python3 tools/device/run_lineage.py "$WORK/lineage/second" $(smoke_flag --smoke) &&
        run_arm compare 120 10 "$log" python3 tools/device/compare_runs.py "$WORK/lineage/first" "$WORK/lineage/second" $(expect_cuda)
}

train_speed() {
    local sizes=()
    ((SMOKE)) && sizes=(--iterations 200 --repetitions 1 --prune-rounds 2)
    run_arm train_speed 90 30 "$OUT/train_speed.log" python3 bench/train_speed.py "${sizes[@]}" --output "$OUT/train_speed.json"
}

setup || {
    echo "setup failed: see env.log" | tee -a "$OUT/summary.txt"
    exit 1
}
arms=("$@")
((${#arms[@]})) || arms=(test_cuda repro train_speed)
for arm in "${arms[@]}"; do
    case $arm in
        test_cuda | repro | lineage | suite | train_speed) "$arm" ;;
        *) echo "unknown arm: $arm (test_cuda, repro, lineage, suite, train_speed)" | tee -a "$OUT/summary.txt" ;;
    esac
done
echo "done in $SECONDS s" | tee -a "$OUT/summary.txt"
