"""Batched, device-side augmentation for in-memory image tensors (SimCLR-style views without per-image Python).

``BatchAugment(x)`` with x a float batch [B, C, H, W] in [0, 1] returns one augmented view [B, C, S, S]:
random resized crop (area ∈ scale, aspect ∈ ratio) and horizontal flip through one ``grid_sample``, then colour
jitter (brightness, contrast and, for RGB, saturation) with probability ``jitter_prob``, grayscale with
probability ``grayscale_prob`` and Gaussian blur with probability ``blur_prob``. ``photometric`` applies the
colour and blur steps alone (for views cropped elsewhere, e.g. in data-loader workers), optionally to given rows
of a larger batch (a data-parallel shard). Randomness comes from ``generator`` (CPU) so that views are
reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F


def _uniform(shape, low, high, generator, device):
    return torch.rand(shape, generator=generator).to(device) * (high - low) + low


def _sampler(n: int, rows: slice, generator, device) -> Callable:
    """``draw(low, high)``: uniform values drawn for ``n`` images, those of ``rows`` kept."""
    return lambda low, high: _uniform(n, low, high, generator, device)[rows]


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


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

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b, dev = x.shape[0], x.device
        area = _uniform(b, *self.scale, generator, dev)
        log_ratio = _uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, dev)
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx = _uniform(b, -1.0, 1.0, generator, dev) * (1 - w)
        cy = _uniform(b, -1.0, 1.0, generator, dev) * (1 - h)
        flip = torch.where(_uniform(b, 0.0, 1.0, generator, dev) < self.flip_prob, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta, (b, x.shape[1], self.size, self.size), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self.photometric(out, generator)

    def photometric(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, rows: Optional[slice] = None,
                    batch_size: Optional[int] = None) -> torch.Tensor:
        """Colour jitter, grayscale and Gaussian blur of a float batch [b, C, S, S] in [0, 1] (no geometry). ``x``
        may be ``rows`` of a batch of ``batch_size``: parameters are drawn for all its images, these rows' kept."""
        draw = _sampler(x.shape[0] if batch_size is None else batch_size, slice(None) if rows is None else rows,
                        generator, x.device)
        x = self._colour(x, draw)
        return self._blur(x, draw) if self.blur_prob > 0 else x

    def _blur(self, x: torch.Tensor, draw: Callable) -> torch.Tensor:
        """Per-image Gaussian blur (probability ``blur_prob``, σ uniform in ``blur_sigma``): one separable grouped
        convolution for the whole batch."""
        b, c, h, w = x.shape
        sigma = draw(*self.blur_sigma)
        apply = draw(0.0, 1.0) < self.blur_prob
        half = self.blur_kernel // 2
        taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B·C, k]
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), kernel[:, None, :, None], groups=b * c)
        return torch.where(apply.view(b, 1, 1, 1), y.reshape(b, c, h, w), x)

    def _colour(self, x: torch.Tensor, draw: Callable) -> torch.Tensor:
        view = (x.shape[0], 1, 1, 1)
        jitter = (draw(0.0, 1.0) < self.jitter_prob).view(view)
        bright = draw(1 - self.brightness, 1 + self.brightness).view(view)
        contrast = draw(1 - self.contrast, 1 + self.contrast).view(view)
        sat = draw(1 - self.saturation, 1 + self.saturation).view(view)
        y = x * bright
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * contrast + mean
        if x.shape[1] == 3:
            y = (y - _gray(y)) * sat + _gray(y)
        x = torch.where(jitter, y.clamp(0, 1), x)
        if self.grayscale_prob > 0 and x.shape[1] == 3:
            gray = (draw(0.0, 1.0) < self.grayscale_prob).view(view)
            x = torch.where(gray, _gray(x).expand_as(x), x)
        return x
