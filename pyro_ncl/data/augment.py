"""Batched, device-side augmentation for image tensors (SimCLR-style views without per-image Python).

``BatchAugment(x)`` with x a float batch [B, C, H, W] in [0, 1] returns one augmented view [B, C, S, S]:
random resized crop (area ∈ scale, aspect ∈ ratio) and horizontal flip through one ``grid_sample``, then colour
jitter (brightness, contrast and, for RGB, saturation) with probability ``jitter_prob``, grayscale with
probability ``grayscale_prob`` and Gaussian blur with probability ``blur_prob``. ``photometric`` applies the
colour and blur steps alone (for views cropped elsewhere, e.g. in data-loader workers).

Random parameters: every image of a view draws ``NUM_PARAMS`` uniforms in [0, 1) (``PARAMS``: geometry first,
then the photometric ones), all images and views at once from a CPU ``generator`` (reproducible on any device) and
copied to the device in one non-blocking transfer (``draw``): no host-device synchronisation per step. Row r of
the parameters belongs to image r of the batch, so a data-parallel shard draws the parameters of the whole
global batch and keeps its own rows (``rows``) before augmenting only its own images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from pyro_ncl.backends import to_device

PARAMS = ("area", "log_ratio", "centre_x", "centre_y", "flip",                       # geometry
          "jitter", "brightness", "contrast", "saturation", "grayscale", "blur_sigma", "blur")  # photometric
NUM_PARAMS, GEOMETRY = len(PARAMS), 5
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, 1, H, W] luma (RGB) or x itself (one channel); constants as Python scalars."""
    if x.shape[1] == 1:
        return x
    r, g, b = GRAY_WEIGHTS
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def draw(num_views: int, batch_size: int, generator: Optional[torch.Generator], device,
         rows: Optional[slice] = None) -> torch.Tensor:
    """Uniforms [num_views, b, NUM_PARAMS] on ``device`` for the ``rows`` (default all) of a batch of
    ``batch_size`` images: drawn on the CPU for the whole batch, sliced, copied once without waiting."""
    u = torch.rand(num_views, batch_size, NUM_PARAMS, generator=generator)
    return to_device(u if rows is None else u[:, rows], device)


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


@dataclass
class BatchAugment:
    size: int
    scale: Tuple[float, float] = (0.3, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 23

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                 params: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One view of x [B, C, H, W] (float in [0, 1], on the device): ``params`` [B, NUM_PARAMS] (from ``draw``)
        or drawn here from ``generator``."""
        if params is None:
            params = draw(1, x.shape[0], generator, x.device)[0]
        return self._photometric(self._crop_flip(x, params), params)

    def photometric(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, rows: Optional[slice] = None,
                    batch_size: Optional[int] = None, params: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colour jitter, grayscale and Gaussian blur of a float batch [b, C, S, S] in [0, 1] (no geometry). ``x``
        may be ``rows`` of a batch of ``batch_size``: parameters are drawn for all its images, these rows' kept."""
        if params is None:
            params = draw(1, batch_size or x.shape[0], generator, x.device, rows)[0]
        return self._photometric(x, params)

    def _crop_flip(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p = params.to(x.dtype)
        area = _between(p[:, 0], *self.scale)
        ratio = _between(p[:, 1], math.log(self.ratio[0]), math.log(self.ratio[1])).exp()
        w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        cx, cy = _between(p[:, 2], -1.0, 1.0) * (1 - w), _between(p[:, 3], -1.0, 1.0) * (1 - h)
        flip = torch.where(p[:, 4] < self.flip_prob, -1.0, 1.0)
        zero = torch.zeros_like(w)
        theta = torch.stack([w * flip, zero, cx, zero, h, cy], dim=1).view(b, 2, 3)
        grid = F.affine_grid(theta, (b, x.shape[1], self.size, self.size), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _photometric(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        p = params.to(x.dtype)
        x = self._colour(x, p)
        return self._blur(x, p) if self.blur_prob > 0 else x

    def _blur(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Per-image Gaussian blur (probability ``blur_prob``, σ uniform in ``blur_sigma``): one separable grouped
        convolution for the whole batch."""
        b, c, h, w = x.shape
        sigma = _between(p[:, 10], *self.blur_sigma)
        apply = p[:, 11] < self.blur_prob
        half = self.blur_kernel // 2
        taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B·C, k]
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), kernel[:, None, :, None], groups=b * c)
        return torch.where(apply.view(b, 1, 1, 1), y.reshape(b, c, h, w), x)

    def _colour(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        view = (x.shape[0], 1, 1, 1)
        jitter = (p[:, 5] < self.jitter_prob).view(view)
        bright = _between(p[:, 6], 1 - self.brightness, 1 + self.brightness).view(view)
        contrast = _between(p[:, 7], 1 - self.contrast, 1 + self.contrast).view(view)
        sat = _between(p[:, 8], 1 - self.saturation, 1 + self.saturation).view(view)
        y = x * bright
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * contrast + mean
        if x.shape[1] == 3:
            y = (y - _gray(y)) * sat + _gray(y)
        x = torch.where(jitter, y.clamp(0, 1), x)
        if self.grayscale_prob > 0 and x.shape[1] == 3:
            gray = (p[:, 9] < self.grayscale_prob).view(view)
            x = torch.where(gray, _gray(x).expand_as(x), x)
        return x


class Normalise:
    """``(x - mean) / std`` per channel for a batch [B, C, H, W] (uint8 images are scaled to [0, 1] first), with
    the constants kept on each device they are used on (copied there once)."""

    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self._on: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device) -> Tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = (self.mean.to(device), self.std.to(device))
        return self._on[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        mean, std = self.constants(x.device)
        return (x - mean) / std
