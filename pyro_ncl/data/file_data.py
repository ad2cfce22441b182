"""Datasets read from image files: ``FolderData`` decodes images with a torch ``DataLoader`` and per-sample
transforms (``imagenet100`` and ``folder`` build on it; this helper module registers nothing).

Reproducibility: the batch order of an epoch is ``epoch_permutation(num_train, seed, epoch)`` and the two views of
the image at position p of that order come from torch's RNG seeded with ``sample_seed(seed, epoch, p)`` inside a
``torch.random.fork_rng()`` block, so batches depend only on (seed, epoch, step): not on ``num_workers``, on the
worker that decodes an image, or on where a resumed run starts.

Unreadable images raise ``ImageReadError("cannot read image PATH: REASON")`` when first read; with
``skip_bad_images=True`` every image is decoded once at construction and the bad ones are left out and counted
(``num_skipped``, plus one warning line).

Decoding (``load_image``) admits only Pillow's own raster decoders (``SAFE_FORMATS``: no EPS, which Pillow hands to
Ghostscript) and converts every image to one mode: "RGB" (3 channels) or "L" (1 channel); 16-bit grayscale is
scaled to 8 bits (Pillow's own conversion would clip it at 255).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data import default_collate

from pyro_ncl.backends import default_num_workers
from pyro_ncl.data.base import DataBundle, check_num_workers, check_subset, epoch_permutation, error_reason, key_seed
from pyro_ncl.data.base import shard_rows, step_generator

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
# Pillow's own decoders for those extensions (JPEG opens cameras' MPO files too); never EPS (Ghostscript), whatever
# the file's name or first bytes
SAFE_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "WEBP", "TIFF")
Samples = List[Tuple[str, int]]  # (image path, label)


class ImageReadError(ValueError):
    """An image file that PIL cannot decode; the message names the file."""


def image_files(folder: Path) -> List[Path]:
    """The image files directly inside ``folder`` (by extension, case-insensitive), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if e.is_file() and os.path.splitext(e.name)[1].lower() in IMG_EXTENSIONS)


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Decode an image (``SAFE_FORMATS`` only) to ``mode`` ("RGB" or "L"); any PIL/OS failure becomes a one-line
    ``ImageReadError`` naming the file."""
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            return _converted(img, mode)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise ImageReadError(f"cannot read image {path}: {error_reason(err)}") from None


def load_rgb(path: str) -> Image.Image:
    """``load_image(path, "RGB")``."""
    return load_image(path, "RGB")


def _converted(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode``; 16- and 32-bit integer grayscale scaled from 0..65535 to 0..255 first."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return img.convert(mode)


def _check_one(path: str) -> Optional[str]:
    """None if ``path`` decodes fully (JPEGs decoded at reduced scale: fast, still reads the whole stream)."""
    try:
        with Image.open(path, formats=SAFE_FORMATS) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except Exception as err:
        return error_reason(err)


def find_bad_images(paths: Sequence[str], threads: Optional[int] = None) -> List[Tuple[str, str]]:
    """(path, reason) of every image in ``paths`` that cannot be decoded (decoded in a thread pool)."""
    with ThreadPoolExecutor(threads or min(16, (os.cpu_count() or 1) * 2)) as pool:
        reasons = list(pool.map(_check_one, paths))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the transforms of the image at ``position`` of epoch ``epoch``'s order."""
    return key_seed(seed, epoch, position)


class _Failed(NamedTuple):
    """Returned instead of a sample when decoding fails, so that the error crosses worker processes intact."""
    message: str


def _collate(items):
    failed = [item for item in items if isinstance(item, _Failed)]
    return failed[0] if failed else default_collate(items)


class _TwoViews(Dataset):
    """item (index, transform seed) → (view1 [C,S,S], view2 [C,S,S], label, index)."""

    def __init__(self, samples: Samples, transform: Callable, mode: str = "RGB"):
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, key = item
        path, label = self.samples[index]
        try:
            img = load_image(path, self.mode)
        except ImageReadError as err:
            return _Failed(str(err))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            return self.transform(img), self.transform(img), label, index


class _Plain(Dataset):
    """index → (image [C,S,S], label), the evaluation transform."""

    def __init__(self, samples: Samples, transform: Callable, mode: str = "RGB"):
        self.samples, self.transform, self.mode = samples, transform, mode

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            return self.transform(load_image(path, self.mode)), label
        except ImageReadError as err:
            return _Failed(str(err))


class _EpochBatches(Sampler):
    """Batches of (index, transform seed) for steps start_step.. of one epoch; set ``seed/epoch/start_step``
    before each pass (the sampler runs in the main process, so persistent workers see the new state)."""

    def __init__(self, num_items: int, batch_size: int):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed = self.epoch = self.start_step = 0
        self.rank, self.world_size = 0, 1  # data parallelism: this process's rows of each global batch

    def __len__(self):
        return max(0, self.num_items // self.batch_size - self.start_step)

    def __iter__(self):
        order = epoch_permutation(self.num_items, self.seed, self.epoch).tolist()
        b = self.batch_size
        rows = shard_rows(b, self.rank, self.world_size)
        batches = [[(order[p], sample_seed(self.seed, self.epoch, p))
                    for p in range(s * b + rows.start, s * b + rows.stop)]
                   for s in range(self.start_step, self.num_items // b)]
        return iter(batches)


def _unwrap(batch):
    if isinstance(batch, _Failed):
        raise ImageReadError(batch.message)
    return batch


def spread_subset(samples: Samples, n: int) -> Samples:
    """A fixed random choice of ``n`` samples (kept in their order), so that a subset spans all classes."""
    if n >= len(samples):
        return list(samples)
    keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return [samples[i] for i in keep.tolist()]


class FolderData(DataBundle):
    """Images read from files. ``train_samples``/``test_samples``: lists of (path, label). ``train_transform``
    maps a PIL image to one normalised view [C, S, S] (drawing from torch's global RNG); ``eval_transform``
    maps it to [C, S, S] deterministically. ``subset``: a fixed random choice of that many training images.
    One pass (train or eval) at a time per batch size: the DataLoaders are cached and their workers persist.
    ``num_workers``: None ("auto") is resolved for the device of the first pass (``default_num_workers``: a share
    of the visible cores on CUDA, 0 on the CPU).
    ``device_augment(x, generator, rows, batch_size)``: when given, finishes each batch of views on the training
    device (the workers then ship uint8 views, a quarter of float32's volume): e.g. normalisation only, or the
    colour work after a crop in the workers, with a generator fixed by (seed, epoch, step), drawing its parameters
    for the whole global batch of ``batch_size`` and applying those of ``rows`` (this process's shard; None: all).
    ``device_normalize(x)``: likewise for the evaluation batches (uint8 from ``eval_transform``).
    ``val_samples``: a validation split ("val", then the split the end-of-run evaluation scores). ``pool_samples``:
    the images training draws from when they are not the labelled training images (unlabelled pre-training, label
    -1; ``subset`` then chooses among them), the labelled ones staying the evaluation's "train" split.
    ``in_channels`` 1 decodes images to grayscale ("L"), 3 to RGB."""

    def __init__(self, name: str, train_samples: Samples, test_samples: Samples, num_classes: int,
                 train_transform: Callable, eval_transform: Callable, image_size: int, subset: Optional[int] = None,
                 num_workers: Optional[int] = 0, skip_bad_images: bool = False, in_channels: int = 3,
                 device_augment: Optional[Callable] = None, device_normalize: Optional[Callable] = None,
                 val_samples: Optional[Samples] = None, pool_samples: Optional[Samples] = None):
        self.name, self.num_classes, self.image_size, self.in_channels = name, num_classes, image_size, in_channels
        self.mode = "L" if in_channels == 1 else "RGB"
        self.num_workers = check_num_workers(num_workers)
        self.num_skipped = 0
        splits = {"train": list(train_samples), "test": list(test_samples), "val": list(val_samples or []),
                  "pool": list(pool_samples or [])}
        if skip_bad_images:
            splits = self._drop_bad(splits)
        pool = splits["pool"] if pool_samples is not None else splits["train"]
        n = check_subset(subset, len(pool), name)
        pool = spread_subset(pool, n)
        self.train_samples = pool if pool_samples is None else splits["train"]
        self.pool_samples, self.test_samples = pool, splits["test"]
        self.val = self.val_samples = splits["val"] if val_samples is not None else None
        self.num_train = n
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.device_augment, self.device_normalize = device_augment, device_normalize
        self._loaders: Dict[tuple, DataLoader] = {}

    @property
    def num_eval_train(self) -> int:
        return len(self.train_samples)

    def _drop_bad(self, splits: Dict[str, Samples]) -> Dict[str, Samples]:
        every = [p for samples in splits.values() for p, _ in samples]
        bad = dict(find_bad_images(list(dict.fromkeys(every))))
        self.num_skipped = len(bad)
        if bad:
            first, reason = next(iter(bad.items()))
            warnings.warn(f"{self.name}: skipped {len(bad)} unreadable image(s) of {len(set(every))} "
                          f"(first: {first}: {reason})", stacklevel=4)
        return {split: [s for s in samples if s[0] not in bad] for split, samples in splits.items()}

    def split_samples(self, split: str) -> Samples:
        """The (path, label) list of an evaluation split: "train" (the labelled training images in use), "val"
        (when there is one) or "test"."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if split == "val" and self.val_samples is None:
            raise ValueError(f"{self.name} has no validation split")
        return {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}[split]

    def eval_image(self, path: str) -> torch.Tensor:
        """One image file as an evaluation batch holds it before ``eval_normalise`` ([C, S, S])."""
        return self.eval_transform(load_image(path, self.mode))

    def eval_normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.device_normalize is None else self.device_normalize(x)

    def _loader(self, kind: str, batch_size: int, device) -> DataLoader:
        pin = torch.device(device).type == "cuda"
        key = (kind, batch_size, pin)
        if key not in self._loaders:
            workers = self.num_workers if self.num_workers is not None else default_num_workers(device)
            common = dict(num_workers=workers, pin_memory=pin, collate_fn=_collate, persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(0))  # leaves torch's global RNG alone
            if kind == "train":
                dataset = _TwoViews(self.pool_samples, self.train_transform, self.mode)
                loader = DataLoader(dataset, batch_sampler=_EpochBatches(self.num_train, batch_size), **common)
            else:
                samples = self.split_samples(kind[len("eval-"):])
                loader = DataLoader(_Plain(samples, self.eval_transform, self.mode), batch_size=batch_size,
                                    shuffle=False, **common)
            self._loaders[key] = loader
        return self._loaders[key]

    def train_batches(self, batch_size, epoch, seed, device, start_step=0, rank=0, world_size=1) -> Iterator:
        """(x1 [B,C,S,S], x2 [B,C,S,S], y [B], index [B]) for steps start_step..steps_per_epoch-1; with
        ``world_size`` > 1 process ``rank``'s B/G rows of each global batch (only those images are decoded)."""
        self.steps_per_epoch(batch_size)
        rows = shard_rows(batch_size, rank, world_size)  # refuses B % G != 0
        loader = self._loader("train", batch_size, device)
        sampler = loader.batch_sampler
        sampler.seed, sampler.epoch, sampler.start_step = seed, epoch, start_step
        sampler.rank, sampler.world_size = rank, world_size
        for step, batch in enumerate(loader, start=start_step):
            x1, x2, y, index = _unwrap(batch)
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            if self.device_augment is not None:
                gen = step_generator(seed * 1009, epoch, step)
                x1, x2 = (self.device_augment(x, gen, rows, batch_size) for x in (x1, x2))
            yield x1, x2, y.to(device, non_blocking=True), index.to(device, non_blocking=True)

    def eval_batches(self, split, batch_size, device) -> Iterator:
        """(x [B,C,S,S], y [B]) over the split in file order (train: the labelled training images in use; "val"
        when there is a validation split)."""
        self.split_samples(split)  # refuses an unknown split
        if batch_size < 1:
            raise ValueError(f"eval batch size must be at least 1, got {batch_size}")
        for batch in self._loader(f"eval-{split}", batch_size, device):
            x, y = _unwrap(batch)
            x = x.to(device, non_blocking=True)
            yield (x if self.device_normalize is None else self.device_normalize(x)), y.to(device, non_blocking=True)

    def close(self) -> None:
        """Drop the cached DataLoaders (their worker processes exit)."""
        self._loaders.clear()
