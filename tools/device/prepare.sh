#!/usr/bin/env bash
# Builds what tools/device/gpu_check.sh carries to the GPU machine, which reaches no package registry:
#   .whl/     a wheel of each package in tools/device/wheels.txt, for that machine's Python
#             (CPython 3.12, x86-64 manylinux): what the project needs there that its image lacks
#   .device/  mnist-raw.tar.xz, this checkout's verified MNIST raw files (data/mnist/MNIST/raw), and
#             git.xz, Debian's git binary, which the check uses only where the image has no git
# Run it in the checkout, after the `data` stage (`make repro` or `dvc repro data`); it prints the
# size of everything a device call carries, which must stay within 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
RAW=data/mnist/MNIST/raw
LIMIT=$((64 * 1024 * 1024))

[ -d "$RAW" ] || { echo "error: $RAW does not exist; run \`dvc repro data\` first" >&2; exit 1; }

# The device README's flags: wheels for CPython 3.12 on x86-64 glibc (manylinux up to 2.28), no sdists.
rm -rf .whl && mkdir .whl
listed=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' tools/device/wheels.txt)
mapfile -t wheels < <(awk 'NF == 1 {print $1}' <<<"$listed")
mapfile -t sdists < <(awk '$2 == "sdist" {print $1}' <<<"$listed")
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
# A wheel built here runs there only if it is pure Python (py3-none-any).
((${#sdists[@]} == 0)) || "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w .whl "${sdists[@]}"
count=$((${#wheels[@]} + ${#sdists[@]}))
built=(.whl/*.whl)
[ "${#built[@]}" -eq "$count" ] || { echo "error: $count packages listed, ${#built[@]} wheels in .whl/" >&2; exit 1; }
for wheel in "${built[@]}"; do
    case $wheel in
        *-cp312-cp312-* | *-abi3-* | *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
        *) echo "error: $wheel runs on no CPython 3.12" >&2 && exit 1 ;;
    esac
done

rm -rf .device && mkdir .device
tar -C data/mnist -cf - MNIST/raw | xz -9e >.device/mnist-raw.tar.xz
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# apt-get download needs the package lists; fetch them only when it cannot find the package.
(cd "$scratch" && { apt-get download git >/dev/null 2>&1 || { apt-get update -qq && apt-get download git >/dev/null; }; })
dpkg-deb -x "$scratch"/git_*.deb "$scratch/git"
xz -9e -c "$scratch/git/usr/bin/git" >.device/git.xz
echo "git: $(basename "$scratch"/git_*.deb)"

wheel_bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
device_bytes=$(du -cb .device/* | tail -1 | cut -f1)
tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((wheel_bytes + device_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "wheels: $count, $(mib "$wheel_bytes"); .device: $(mib "$device_bytes"); working tree: $(mib "$tree_bytes")"
echo "a device call carries $(mib "$total") of its 64 MiB"
((total <= LIMIT)) || { echo "error: over the 64 MiB a device call carries" >&2; exit 1; }
