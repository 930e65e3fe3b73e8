"""CIFAR's training augmentation on the device: 4-pixel crops and flips, drawn from (seed, iteration)."""

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lottery import augment, data, hparams, identity, training, validation
from lottery.models import catalog
from lottery.masks import ones
from tests.conftest import default_params, with_overrides
from tests.test_data import data_hp

BLACK = (-1.0, -2.0, -3.0)


def every_variant(image, padding, black):
    """Each crop and mirror image CropFlip may return for `image`, by torchvision's own ops."""
    fill = torch.tensor(black).view(-1, 1, 1)
    padded = TF.pad(image - fill, [padding] * 4) + fill
    height, width = image.shape[1:]
    variants = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = TF.crop(padded, top, left, height, width)
            variants += [crop, TF.horizontal_flip(crop)]
    return variants


def test_each_image_is_one_of_its_padded_crops_or_their_mirror_images():
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    augmented = augment.CropFlip(padding=4, black=BLACK)(images, seed=3, iteration=7, batch_size=64)
    assert augmented.shape == images.shape
    unchanged = mirrored = 0
    for image, result in zip(images, augmented):
        assert any(torch.equal(result, variant) for variant in every_variant(image, 4, BLACK))
        unchanged += torch.equal(result, image)
        mirrored += any(torch.equal(result, v) for v in every_variant(image, 4, BLACK)[1::2])
    assert unchanged < 8 and 16 < mirrored < 48  # 1 in 81 crops is centred; half the images are mirrored


def test_the_padding_is_a_black_pixel_in_each_channel():
    images = torch.zeros(256, 3, 8, 8)
    augmented = augment.CropFlip(padding=4, black=BLACK)(images, seed=0, iteration=0, batch_size=256)
    for channel, value in enumerate(BLACK):
        assert set(augmented[:, channel].unique().tolist()) == {0.0, value}


def test_draws_depend_on_seed_and_iteration_alone_and_ranks_take_their_rows():
    images = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    crop_flip = augment.CropFlip(padding=2, black=(0.0,))
    first = crop_flip(images, seed=5, iteration=11, batch_size=32)
    assert torch.equal(first, augment.CropFlip(padding=2, black=(0.0,))(images, seed=5, iteration=11, batch_size=32))
    assert not torch.equal(first, crop_flip(images, seed=5, iteration=12, batch_size=32))
    assert not torch.equal(first, crop_flip(images, seed=6, iteration=11, batch_size=32))
    # A data-parallel rank augments its slice of the batch exactly as one process augments it.
    rows = slice(16, 32)
    assert torch.equal(crop_flip(images[rows], seed=5, iteration=11, batch_size=32, rows=rows), first[rows])


def test_cifar_trains_with_crops_and_flips_by_default_and_mnist_without(tiny_cifar):
    root, _ = tiny_cifar
    standard = data.load(data_hp(dataset="cifar10", source="download", validation_size=5), root)
    assert isinstance(standard.augment, augment.CropFlip) and standard.augment.padding == 4
    spec = data.DATASETS["cifar10"]
    assert standard.augment.black == pytest.approx([-m / s for m, s in zip(spec.mean, spec.std)])
    off = data_hp(dataset="cifar10", source="download", validation_size=5, augmentation="none")
    assert data.load(off, root).augment is None
    assert data.augmentation(data_hp()) is None  # MNIST has no standard augmentation
    # Only an augmentation that happens names the lineage: MNIST's names stay as they were.
    named = lambda **data_keys: identity.of(hparams.from_dict(with_overrides(default_params(), data_keys)))["data"]
    assert "augmentation" not in named() and "augmentation" in named(**{"data.dataset": "cifar10", "data.source": "download"})

    def trained(splits):
        model = catalog.build("conv2", (3, 32, 32), 10, seed=0)
        hp = dataclasses.replace(training_hp(), iterations=6, eval_every=3, batch_size=5)
        training.train(model, ones(model), splits, hp, seed=0)
        return model.state_dict()

    augmented, again, plain = trained(standard), trained(standard), trained(data.load(off, root))
    assert all(torch.equal(augmented[k], again[k]) for k in augmented)
    assert not all(torch.equal(augmented[k], plain[k]) for k in augmented)


def training_hp():
    return validation.from_dict(default_params()).train
