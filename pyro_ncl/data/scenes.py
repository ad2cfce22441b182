"""Composed-background benchmark (``scenes``): a Fashion-MNIST item pasted on a procedural background, RGB 32 px.

Every image is made deterministically from ``seed`` (in chunks of ``CHUNK`` images, each with its own generators,
so image i is the same whatever ``subset``): a background of one of ``num_backgrounds`` types shared by all classes
(stripes at an angle, checkerboard, smooth gradient, blob noise, rings; random frequency, phase and two colours),
then the 28 px item at a random position, blended with its intensity as alpha in a random colour.
Nothing is written to disk.

Labels: ``labels`` (the item's class) and ``background_labels`` (the background type), exposed as
``bundle.train_background`` / ``bundle.test_background`` aligned with ``eval_batches``. The background type is
drawn from its own generator: with probability ``spurious_correlation`` it is the class's own type
(class % num_backgrounds), otherwise uniform. ``test_spurious_correlation`` (default 0: test backgrounds
independent of the class) does the same for the test split.

Options: ``seed`` (0), ``spurious_correlation`` (0.0), ``test_spurious_correlation`` (0.0), ``num_backgrounds``
(5, from 2 to 5), ``background_strength`` (1.0: the background's contrast and saturation around mid-grey; lower
makes the item easier to learn than the background), ``val_size`` (the last V training scenes as the validation
split), ``exclude_classes`` (item classes held out of training and validation, their test scenes the "outliers"
split: see ``pyro_ncl.data.base``; only the scenes used are composed), ``num_workers`` (ignored). ``root``: the
Fashion-MNIST IDX folder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F

from pyro_ncl.data.base import DATASETS, DatasetNotFound, ImageTensors, InMemoryData, check_num_workers, check_subset
from pyro_ncl.data.base import carve_validation, key_seed, parse_classes, reject_options, split_classes
from pyro_ncl.data.cifar import cifar_augment
from pyro_ncl.data.idx import DEFAULT_ROOTS, HOW_TO_GET, load_idx_split

NAME, SIZE, ITEM, CHUNK = "scenes", 32, 28, 4096
BACKGROUNDS = ("stripes", "checkerboard", "gradient", "blobs", "rings")


def _generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(key_seed(*key))


def _rand(n: int, g: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


def background_patterns(kinds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Pattern [n, S, S] in [0, 1] for background types ``kinds`` [n]. Every image's parameters are drawn in a
    fixed order whatever its type, so the draws do not depend on the types."""
    n = kinds.shape[0]
    u = (torch.arange(SIZE) + 0.5) / SIZE
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    yy, xx = yy[None], xx[None]
    col = lambda t: t[:, None, None]  # noqa: E731  [n] → [n, 1, 1]
    angle, phase, freq = col(_rand(n, g, 0, math.pi)), col(_rand(n, g, 0, 2 * math.pi)), col(_rand(n, g, 2, 5))
    cell, ox, oy = col(_rand(n, g, 3, 8)), col(_rand(n, g, 0, 16)), col(_rand(n, g, 0, 16))
    noise = torch.randn(n, 1, 4, 4, generator=g)
    cx, cy, rfreq = col(_rand(n, g)), col(_rand(n, g)), col(_rand(n, g, 3, 6))
    proj = xx * angle.cos() + yy * angle.sin()  # [n, S, S]
    out = torch.empty(n, SIZE, SIZE)
    for kind, name in enumerate(BACKGROUNDS):
        at = kinds == kind
        if not at.any():
            continue
        if name == "stripes":
            out[at] = 0.5 + 0.5 * torch.tanh(3 * torch.sin(2 * math.pi * freq[at] * proj[at] + phase[at]))
        elif name == "checkerboard":
            out[at] = ((torch.floor(xx * SIZE / cell[at] + ox[at]) + torch.floor(yy * SIZE / cell[at] + oy[at])) % 2)
        elif name == "gradient":
            p = proj[at]
            lo, hi = p.amin(dim=(1, 2), keepdim=True), p.amax(dim=(1, 2), keepdim=True)
            out[at] = (p - lo) / (hi - lo)
        elif name == "blobs":
            smooth = F.interpolate(noise[at], size=(SIZE, SIZE), mode="bicubic", align_corners=False)
            out[at] = torch.sigmoid(4 * smooth[:, 0])
        else:  # rings
            radius = ((xx - cx[at]) ** 2 + (yy - cy[at]) ** 2).sqrt()
            out[at] = 0.5 + 0.5 * torch.tanh(3 * torch.sin(2 * math.pi * rfreq[at] * radius + phase[at]))
    return out


def paste(items: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """items uint8 [n, 28, 28], offsets (dy, dx) [n, 2] → alpha [n, 1, 32, 32] in [0, 1] (zero outside the item)."""
    n = items.shape[0]
    padded = F.pad(items.float() / 255, (0, 1, 0, 1))  # index ITEM reads a zero
    grid = torch.arange(SIZE)[None] - offset[:, :, None]  # [n, 2, S]
    grid = torch.where((grid >= 0) & (grid < ITEM), grid, ITEM)
    rows, cols = grid[:, 0, :, None], grid[:, 1, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols][:, None]


def compose(items: torch.Tensor, kinds: torch.Tensor, g: torch.Generator, strength: float = 1.0,
            item_contrast: float = 0.0) -> torch.Tensor:
    """items uint8 [n, 28, 28], background types [n] → uint8 RGB images [n, 3, 32, 32]. ``strength`` ∈ [0, 1]
    scales the background around mid-grey, 0.5 + strength · (background − 0.5): its pattern's contrast and its
    colours' saturation (1: the full background; 0: plain grey); the random draws do not depend on it."""
    n = items.shape[0]
    pattern = background_patterns(kinds, g)[:, None]  # [n, 1, S, S]
    first = torch.rand(n, 3, 1, 1, generator=g)
    second = (first + 0.3 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)) % 1.0  # each channel differs by >= 0.3
    background = 0.5 + strength * (first * (1 - pattern) + second * pattern - 0.5)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    colour = (1 - item_contrast) * colour + item_contrast
    alpha = paste(items, torch.randint(0, SIZE - ITEM + 1, (n, 2), generator=g))
    return (background * (1 - alpha) + colour * alpha).mul_(255).round_().to(torch.uint8)


def background_types(labels: torch.Tensor, rho: float, num_backgrounds: int, g: torch.Generator) -> torch.Tensor:
    """Background type per image [n]: the class's own type (class % num_backgrounds) with probability rho,
    otherwise uniform over the types."""
    uniform = torch.randint(0, num_backgrounds, labels.shape, generator=g)
    own = torch.rand(labels.shape, generator=g) < rho
    return torch.where(own, labels % num_backgrounds, uniform)


def make_split(items: ImageTensors, n: int, seed: int, split: str, rho: float, num_backgrounds: int,
               strength: float = 1.0, start: int = 0, item_contrast: float = 0.0) -> Tuple[ImageTensors, torch.Tensor]:
    """Scenes start … start + n − 1 of a split: (images uint8 [n, 3, 32, 32] with class labels [n], background
    labels [n]). Scene i depends only on (seed, split, i): its draws cover whole chunks of CHUNK items."""
    images, backgrounds = [], []
    stop = start + n
    for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        full = slice(chunk * CHUNK, min((chunk + 1) * CHUNK, items.images.shape[0]))
        kinds = background_types(items.labels[full], rho, num_backgrounds,
                                 _generator(seed, split, chunk, "background"))
        scene = compose(items.images[full][:, 0], kinds, _generator(seed, split, chunk, "scene"), strength,
                        item_contrast)
        take = slice(max(start, full.start) - full.start, min(stop, full.stop) - full.start)
        images.append(scene[take])
        backgrounds.append(kinds[take])
    return ImageTensors(torch.cat(images), items.labels[start:stop].clone()), torch.cat(backgrounds)


def channel_stats(images: torch.Tensor) -> Tuple[list, list]:
    """Per-channel mean and std of uint8 images [N, C, H, W] in [0, 1], accumulated in chunks."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], CHUNK):
        x = images[start:start + CHUNK].double().div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean.tolist(), (squares / count - mean.square()).clamp(min=1e-12).sqrt().tolist()


class ScenesData(InMemoryData):
    """``InMemoryData`` plus ``train_background`` / ``val_background`` / ``test_background`` /
    ``outliers_background`` (int64 [N]; ``background(split)``) and ``background_names``. With ``exclude_classes``
    the splits come without those classes already and ``outliers`` holds their test scenes."""

    def __init__(self, train: ImageTensors, test: ImageTensors, train_background: torch.Tensor,
                 test_background: torch.Tensor, num_backgrounds: int, val: ImageTensors = None,
                 val_background: torch.Tensor = None, exclude_classes=None, outliers: ImageTensors = None,
                 outliers_background: torch.Tensor = None):
        mean, std = channel_stats(train.images)
        super().__init__(NAME, train, test, num_classes=10, mean=mean, std=std, augment=cifar_augment(SIZE), val=val,
                         exclude_classes=exclude_classes, outliers=outliers)
        self.train_background, self.test_background = train_background, test_background
        self.val_background, self.outliers_background = val_background, outliers_background
        self.background_names = list(BACKGROUNDS[:num_backgrounds])

    def background(self, split: str) -> torch.Tensor:
        """[N] the background types of a split, aligned with ``eval_batches(split)``."""
        return {"train": self.train_background, "val": self.val_background, "test": self.test_background,
                "outliers": self.outliers_background}[split]


def _without(scenes: ImageTensors, backgrounds: torch.Tensor, classes) -> tuple:
    """(scenes of the other classes, their backgrounds, scenes of ``classes``, their backgrounds), in order."""
    out = torch.isin(scenes.labels, torch.tensor(classes, dtype=scenes.labels.dtype))
    return (ImageTensors(scenes.images[~out], scenes.labels[~out]), backgrounds[~out],
            ImageTensors(scenes.images[out], scenes.labels[out]), backgrounds[out])


def _check_rho(name: str, value) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@DATASETS.register(NAME)
def scenes(root=None, subset=None, seed: int = 0, spurious_correlation: float = 0.0,
           test_spurious_correlation: float = 0.0, num_backgrounds: int = len(BACKGROUNDS), num_workers: int = 0,
           background_strength: float = 1.0, item_contrast: float = 0.0, val_size=None, exclude_classes=None,
           **options) -> ScenesData:
    reject_options(NAME, options)
    check_num_workers(num_workers)
    rho, test_rho = _check_rho("spurious_correlation", spurious_correlation), \
        _check_rho("test_spurious_correlation", test_spurious_correlation)
    strength = _check_rho("background_strength", background_strength)
    look = dict(strength=strength, item_contrast=_check_rho("item_contrast", item_contrast))
    if not isinstance(num_backgrounds, int) or not 2 <= num_backgrounds <= len(BACKGROUNDS):
        raise ValueError(f"num_backgrounds must be an integer from 2 to {len(BACKGROUNDS)}, got {num_backgrounds!r}")
    folder = Path(root or DEFAULT_ROOTS["fashion-mnist"])
    if not folder.is_dir():
        raise DatasetNotFound(f"{NAME} needs the Fashion-MNIST items: {folder} is not a folder; "
                              f"{HOW_TO_GET['fashion-mnist']}, or pass --data-root")
    train_items, test_items = (load_idx_split(folder, s, "fashion-mnist") for s in ("train", "test"))
    total = train_items.images.shape[0]
    pool, held = carve_validation(ImageTensors(train_items.images[:, :0], train_items.labels), val_size, NAME)
    excluded = parse_classes(exclude_classes, 10, NAME)
    kept = split_classes(pool, excluded)[0].labels.shape[0] if excluded else pool.labels.shape[0]
    n = check_subset(subset, kept, NAME)
    if excluded:  # compose the scenes up to the n-th kept one, then drop the excluded classes
        positions = (~torch.isin(pool.labels, torch.tensor(excluded, dtype=pool.labels.dtype))).nonzero()[:, 0]
        n = int(positions[n - 1]) + 1
    train, train_bg = make_split(train_items, n, seed, "train", rho, num_backgrounds, **look)
    val, val_bg = (make_split(train_items, val_size, seed, "train", rho, num_backgrounds, start=total - val_size,
                              **look) if held is not None else (None, None))
    test, test_bg = make_split(test_items, test_items.images.shape[0], seed, "test", test_rho, num_backgrounds,
                               **look)
    outliers = outliers_bg = None
    if excluded:
        train, train_bg = _without(train, train_bg, excluded)[:2]
        val, val_bg = _without(val, val_bg, excluded)[:2] if val is not None else (None, None)
        test, test_bg, outliers, outliers_bg = _without(test, test_bg, excluded)
    return ScenesData(train, test, train_bg, test_bg, num_backgrounds, val=val, val_background=val_bg,
                      exclude_classes=excluded or None, outliers=outliers, outliers_background=outliers_bg)


def background_leakage(train_features: torch.Tensor, train_bg: torch.Tensor, test_features: torch.Tensor,
                       test_bg: torch.Tensor, **probe_kwargs) -> float:
    """Linear-probe test accuracy in [0, 1] for the background type from features (train [N, D], test [M, D];
    labels [N], [M]). Chance is 1/num_backgrounds; higher means the features carry the background."""
    from pyro_ncl.probes import linear_probe
    probe_kwargs.setdefault("num_classes", int(max(train_bg.max(), test_bg.max())) + 1)
    return linear_probe(train_features, train_bg, test_features, test_bg, **probe_kwargs)
