"""2-D data augmentation on the training device, one batch at a time (nnU-Net's 2-D set).

Each transform is applied to each sample independently with its probability. Rotation and
scaling share ONE `affine_grid`/`grid_sample` per batch (image bilinear, label nearest,
zero padding = background), computed only for the samples that drew one, so the others
stay bit-identical. Intensity transforms touch the image only. Every random number comes
from the `torch.Generator` passed in, and every call draws the same amount of randomness
whatever the outcomes, so a saved generator state replays the same augmentation.

Conventions (documented because papers differ): scale `s` multiplies the sampling
coordinates (as batchgenerators does), so `s > 1` shows more of the image, smaller;
rotation is about the image centre in normalised coordinates, which is a true rotation
for the square slices this package stores. Gamma follows nnU-Net v2: an inverted-image
gamma with `aug_gamma_invert_p`, then a plain one with `aug_gamma_p`, both keeping each
channel's mean and standard deviation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unetscout.device import fast_layout
from unetscout.train.presets import TrainConfig


class Augmenter:
    """Callable `(image [B,C,H,W] float, label [B,H,W] int) -> (image, label)`, out of place."""

    def __init__(self, config: TrainConfig, generator: torch.Generator):
        self.config = config
        self.generator = generator

    # -- random draws: all on the generator's device ------------------------------------
    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device)

    def _uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * self._rand(*shape)

    def _coin(self, p: float, n: int) -> Tensor:
        return self._rand(n) < p

    @staticmethod
    def _chosen(apply: Tensor, device: torch.device) -> Tensor:
        """Batch positions of the samples `apply` selects (one host sync on a GPU: found once
        per draw, shared by the image and its label)."""
        return apply.nonzero().squeeze(1).to(device)

    @staticmethod
    def _on_chosen(x: Tensor, chosen: Tensor, transform) -> Tensor:
        """`transform(samples, chosen)` computed on the samples at `chosen` only (`chosen` also
        picks their drawn parameters); the others are left as they are. With per-sample
        probabilities of 0.1-0.3 this skips most of the arithmetic."""
        if not chosen.numel():
            return x
        return x.index_copy(0, chosen, transform(x.index_select(0, chosen), chosen))

    # -- transforms ------------------------------------------------------------------------
    def _spatial(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        c, n = self.config, image.shape[0]
        rotate, scale = self._coin(c.aug_rotation_p, n), self._coin(c.aug_scale_p, n)
        angle = self._uniform(-c.aug_rotation_degrees, c.aug_rotation_degrees, n) * (math.pi / 180)
        factor = self._uniform(c.aug_scale_min, c.aug_scale_max, n)
        chosen = self._chosen(rotate | scale, image.device)
        if chosen.numel():
            angle = torch.where(rotate, angle, torch.zeros_like(angle))[chosen.to(angle.device)]
            factor = torch.where(scale, factor, torch.ones_like(factor))[chosen.to(factor.device)]
            cos, sin = torch.cos(angle) * factor, torch.sin(angle) * factor
            zero = torch.zeros_like(cos)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                                 torch.stack([sin, cos, zero], 1)], 1).to(image.device, torch.float32)
            grid = F.affine_grid(theta, [len(chosen), *image.shape[1:]], align_corners=False)
            image = self._on_chosen(image, chosen, lambda x, _: F.grid_sample(
                x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(image.dtype))
            label = self._on_chosen(label, chosen, lambda x, _: F.grid_sample(
                x[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                align_corners=False)[:, 0].round().to(label.dtype))
        for axis in (-1, -2):
            flip = self._chosen(self._coin(self.config.aug_mirror_p, n), image.device)
            image = self._on_chosen(image, flip, lambda x, _: x.flip(axis))
            label = self._on_chosen(label, flip, lambda x, _: x.flip(axis))
        return image, label

    def _noise(self, image: Tensor) -> Tensor:
        n = image.shape[0]
        apply = self._coin(self.config.aug_noise_p, n)
        std = self._uniform(0.0, self.config.aug_noise_variance, n).sqrt().to(image.device)
        noise = torch.randn(image.shape, generator=self.generator, device=self.generator.device)
        return self._on_chosen(image, self._chosen(apply, image.device),
                               lambda x, i: x + noise.to(image.device, image.dtype)[i] * std[i, None, None, None])

    def _blur(self, image: Tensor) -> Tensor:
        c = self.config
        n, ch, h, w = image.shape
        apply = self._coin(c.aug_blur_p, n)
        sigma = self._uniform(c.aug_blur_sigma_min, c.aug_blur_sigma_max, n, ch).to(image.device)
        radius = max(1, math.ceil(3 * c.aug_blur_sigma_max))
        radius = min(radius, h - 1, w - 1)  # reflect padding needs radius < edge
        offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)

        def blur(x: Tensor, index: Tensor) -> Tensor:
            k = x.shape[0] * ch
            kernel = torch.exp(-offsets ** 2 / (2 * sigma[index].reshape(-1, 1).float() ** 2))
            kernel = kernel / kernel.sum(1, keepdim=True)                      # [k, taps]
            flat = x.float().reshape(1, k, h, w)
            # Separable Gaussian: one grouped conv per axis blurs every (sample, channel) with its sigma.
            flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=k)
            flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=k)
            return flat.reshape(x.shape).to(image.dtype)
        return self._on_chosen(image, self._chosen(apply, image.device), blur)

    def _brightness(self, image: Tensor) -> Tensor:
        c, n = self.config, image.shape[0]
        apply = self._coin(c.aug_brightness_p, n)
        factor = self._uniform(c.aug_brightness_min, c.aug_brightness_max, n)
        factor = torch.where(apply, factor, torch.ones_like(factor)).to(image.device, image.dtype)
        return image * factor[:, None, None, None]

    def _contrast(self, image: Tensor) -> Tensor:
        c, n = self.config, image.shape[0]
        apply = self._coin(c.aug_contrast_p, n)
        factor = self._uniform(c.aug_contrast_min, c.aug_contrast_max, n).to(image.device, image.dtype)

        def contrast(x: Tensor, index: Tensor) -> Tensor:
            mean = x.mean((2, 3), keepdim=True)
            low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
            # nnU-Net keeps the original value range, so contrast never invents new extremes.
            return torch.minimum(torch.maximum((x - mean) * factor[index, None, None, None] + mean, low), high)
        return self._on_chosen(image, self._chosen(apply, image.device), contrast)

    def _gamma(self, image: Tensor, p: float, invert: bool) -> Tensor:
        c = self.config
        n, ch = image.shape[:2]
        apply = self._coin(p, n)
        below_one = self._coin(0.5, n * ch)
        low_part = self._uniform(c.aug_gamma_min, min(1.0, c.aug_gamma_max), n * ch)
        high_part = self._uniform(max(1.0, c.aug_gamma_min), c.aug_gamma_max, n * ch)
        gamma = torch.where(below_one & (c.aug_gamma_min < 1), low_part, high_part)
        gamma = gamma.reshape(n, ch, 1, 1).to(image.device, torch.float32)

        def adjust(samples: Tensor, index: Tensor) -> Tensor:
            x = -samples.float() if invert else samples.float()
            mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
            low = x.amin((2, 3), keepdim=True)
            span = x.amax((2, 3), keepdim=True) - low + 1e-7
            y = ((x - low) / span).clamp(0, 1) ** gamma[index] * span + low
            y = (y - y.mean((2, 3), keepdim=True)) / (y.std((2, 3), keepdim=True) + 1e-8) * std + mean
            return (-y if invert else y).to(samples.dtype)
        return self._on_chosen(image, self._chosen(apply, image.device), adjust)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        image, label = self._spatial(image, label)
        image = self._noise(image)
        image = self._blur(image)
        image = self._brightness(image)
        image = self._contrast(image)
        image = self._gamma(image, c.aug_gamma_invert_p, invert=True)
        image = self._gamma(image, c.aug_gamma_p, invert=False)
        return image, label


def device_batch(image: Tensor, label: Tensor, device: torch.device, augmenter: "Augmenter | None" = None,
                 channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """A loader batch (image float [B,C,H,W], label uint8 [B,H,W]) on the training device, augmented
    there when the preset augments, channels-last when asked (CUDA): the one way training and the
    cell search feed a batch to their network."""
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True).long()
    if augmenter is not None:
        image, label = augmenter(image, label)
    return fast_layout(image, channels_last), label
