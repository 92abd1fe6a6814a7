"""GPU-side augmentation: exactness where it must be exact, consistency, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from unetscout.train.augment import Augmenter
from unetscout.train.presets import PRESETS, TrainConfig

PROBABILITIES = [f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("aug_") and f.name.endswith("_p")]


def only(**settings) -> TrainConfig:
    """nnunet augmentation with every probability 0 except those given."""
    return PRESETS["nnunet"].replace(**{**{name: 0.0 for name in PROBABILITIES}, **settings})


def generator(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def batch(seed: int = 0, n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(seed)
    label = torch.randint(0, 3, (n, size, size), generator=g)
    image = torch.randn(n, 2, size, size, generator=g) + label[:, None].float()
    return image, label


def test_identity_when_every_probability_is_zero():
    image, label = batch()
    out_image, out_label = Augmenter(only(), generator())(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)


def test_mirror_is_exact():
    image, label = batch()
    out_image, out_label = Augmenter(only(aug_mirror_p=1.0), generator())(image, label)
    assert torch.equal(out_image, image.flip(-1).flip(-2))
    assert torch.equal(out_label, label.flip(-1).flip(-2))


def test_unit_scale_without_rotation_is_identity_up_to_rounding():
    # A scale of exactly 1 and angle 0 go through grid_sample: checks the grid convention.
    image, label = batch()
    config = only(aug_scale_p=1.0, aug_scale_min=1.0, aug_scale_max=1.0)
    out_image, out_label = Augmenter(config, generator())(image, label)
    assert torch.allclose(out_image, image, atol=1e-5)
    assert torch.equal(out_label, label)


def test_all_transforms_keep_label_set_shape_and_dtype():
    image, label = batch(n=16)
    config = PRESETS["nnunet"].replace(**{name: 1.0 for name in PROBABILITIES})
    out_image, out_label = Augmenter(config, generator())(image, label)
    assert out_image.shape == image.shape and out_image.dtype == image.dtype
    assert out_label.shape == label.shape and out_label.dtype == label.dtype
    assert set(out_label.unique().tolist()) <= {0, 1, 2}
    assert torch.isfinite(out_image).all()
    assert not torch.equal(out_image, image)


def test_image_and_label_move_together():
    # The image is the label itself; after rotation + scaling (bilinear vs nearest) they
    # must still agree almost everywhere (they differ only on boundaries).
    g = generator(3)
    label = torch.zeros(8, 32, 32, dtype=torch.long)
    label[:, 4:14, 6:20] = 1
    label[:, 18:28, 10:26] = 2
    image = label[:, None].float()
    config = only(aug_rotation_p=1.0, aug_scale_p=1.0)
    out_image, out_label = Augmenter(config, g)(image, label)
    assert not torch.equal(out_label, label)
    agree = (out_image[:, 0].round().long() == out_label).float().mean().item()
    assert agree > 0.9


def test_reproducible_for_a_seed_and_different_for_another():
    image, label = batch(n=16)
    config = PRESETS["nnunet"]
    first = Augmenter(config, generator(7))(image, label)
    again = Augmenter(config, generator(7))(image, label)
    other = Augmenter(config, generator(8))(image, label)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_generator_state_replays_the_next_batch():
    image, label = batch(n=16)
    augmenter = Augmenter(PRESETS["nnunet"], generator(1))
    augmenter(image, label)
    state = augmenter.generator.get_state()
    expected = augmenter(image, label)
    augmenter.generator.set_state(state)
    replay = augmenter(image, label)
    assert torch.equal(expected[0], replay[0]) and torch.equal(expected[1], replay[1])


def test_blur_matches_scipy_gaussian_filter():
    image, label = batch(n=2)
    config = only(aug_blur_p=1.0, aug_blur_sigma_min=1.0, aug_blur_sigma_max=1.0)
    out_image, _ = Augmenter(config, generator())(image, label)
    # torch 'reflect' padding is scipy's 'mirror'; kernel radius 3 sigma.
    expected = ndimage.gaussian_filter(image.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(out_image.numpy(), expected, atol=1e-5)


def test_brightness_is_one_factor_per_sample_in_range():
    image, label = batch()
    image = image.abs() + 0.5
    config = only(aug_brightness_p=1.0)
    out_image, _ = Augmenter(config, generator())(image, label)
    ratio = out_image / image
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), rtol=1e-5)
    assert (per_sample >= 0.75 - 1e-6).all() and (per_sample <= 1.25 + 1e-6).all()


def test_contrast_keeps_the_value_range():
    image, label = batch()
    out_image, _ = Augmenter(only(aug_contrast_p=1.0), generator())(image, label)
    assert (out_image.amin((2, 3)) >= image.amin((2, 3)) - 1e-6).all()
    assert (out_image.amax((2, 3)) <= image.amax((2, 3)) + 1e-6).all()


@pytest.mark.parametrize("setting", ["aug_gamma_p", "aug_gamma_invert_p"])
def test_gamma_keeps_mean_and_std(setting):
    image, label = batch()
    out_image, _ = Augmenter(only(**{setting: 1.0}), generator())(image, label)
    assert not torch.allclose(out_image, image)
    assert torch.allclose(out_image.mean((2, 3)), image.mean((2, 3)), atol=1e-4)
    assert torch.allclose(out_image.std((2, 3)), image.std((2, 3)), atol=1e-4)


def test_noise_variance_bounded():
    image, label = batch(n=32, size=32)
    config = only(aug_noise_p=1.0, aug_noise_variance=0.1)
    out_image, out_label = Augmenter(config, generator())(image, label)
    variance = (out_image - image).var((1, 2, 3))
    assert (variance > 0).all() and (variance < 0.1 * 1.3).all()
    assert torch.equal(out_label, label)
