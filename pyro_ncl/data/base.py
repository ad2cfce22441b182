"""The data interface every dataset provides, and the in-memory implementation for small image sets.

A dataset factory ``DATASETS[name](root=None, subset=None, **options)`` returns a ``DataBundle``:
    ``num_train``, ``num_classes``, ``in_channels``, ``image_size``
    ``steps_per_epoch(batch_size)``
    ``train_batches(batch_size, epoch, seed, device, start_step=0)`` → iterator of (x1, x2, y, index): two
        augmented, normalised views [B, C, S, S] on ``device``, labels [B] and dataset indices [B]; the order and
        the views depend only on (seed, epoch, step), so a resumed run sees the same batches;
    ``eval_batches(split, batch_size, device)`` → iterator of (x, y), split "train", "val" (when a validation
        split is carved, ``val_size``), "test" or "outliers" (with ``exclude_classes``), no augmentation;
    ``eval_split``: the split the end-of-run evaluation scores: "val" when there is a validation split (the test
        split is then left unread), else "test";
    ``eval_image(path)`` → one image file as an evaluation batch holds it before ``eval_normalise(x)`` (images
        that are not part of the dataset, e.g. for feature extraction);
    ``resolved_options``: settings the dataset resolved from its files ("auto" ones, e.g. the normalisation
        statistics of a folder of images), recorded in the run's config.json so that a resumed or reloaded run
        reads the data exactly as it was trained on.

Validation (``val_size`` V, the in-memory datasets): the last V images of the training set are held out as the
"val" split; training (and ``subset``, which counts within the rest) uses the images before them, so a run with
``--subset 10000`` trains on the same images with or without a validation split.

Held-out classes (``exclude_classes``, the in-memory datasets): the training and validation images of those classes
are removed (after the validation split is carved, before ``subset`` counts: ``--subset N`` trains on the first N
images of the other classes); the "test" split keeps the other classes only, so the end-of-run metrics are those of
the classes the run was trained on, and the removed classes' test images become the split "outliers"
(``eval_batches("outliers", ...)``, ``bundle.outliers``): the out-of-distribution images of
``experiments/uncertainty.py``. Labels keep their class ids (``num_classes`` is unchanged).

Data parallelism (``pyro_ncl.distributed``): ``train_batches(..., rank=r, world_size=G)`` (in-memory and
folder datasets) yields process r's contiguous shard, rows r·B/G .. (r+1)·B/G − 1, of the very global batch of B
images (and views) that one process would get; ``local_train_batches`` does the same for any dataset.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from pyro_ncl.backends import to_device
from pyro_ncl.data.augment import BatchAugment, Normalise, draw
from pyro_ncl.registry import Registry

DATASETS: Registry = Registry("dataset")


class DatasetNotFound(FileNotFoundError):
    """The data are missing; the message says where we looked and how to get them."""


def reject_options(name: str, options: dict) -> None:
    """One-line ValueError for options a dataset factory does not know."""
    if options:
        raise ValueError(f"unknown option(s) for dataset {name}: {', '.join(sorted(options))}")


def check_num_workers(num_workers) -> Optional[int]:
    """An integer >= 0, or None: "auto" (resolved per device, see ``backends.default_num_workers``)."""
    if num_workers is None:
        return None
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        raise ValueError(f"--num-workers must be an integer >= 0, got {num_workers!r}")
    return num_workers


def error_reason(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when it has none."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def torchvision_folder(name: str, root: Path, folder: str, stems: Sequence[str],
                       download: Optional[Callable[[Path], None]] = None,
                       hints: Optional[Dict[str, str]] = None) -> Path:
    """Where torchvision's ``folder`` is: ``root`` itself if so named, else ``root / folder``. ``download``, when
    given, is first called with the folder's parent. DatasetNotFound for the first of ``stems`` missing there
    (with its ``hints`` entry appended)."""
    parent, where = (root.parent, root) if root.name == folder else (root, root / folder)
    if download is not None:
        download(parent)
    for stem in stems:
        if not (where / stem).is_file():
            raise DatasetNotFound(f"{name} not found: no {stem} in {where}; pass --download to fetch it with "
                                  f"torchvision, or place torchvision's {folder} folder in --data-root"
                                  f"{(hints or {}).get(stem, '')}")
    return where


def key_seed(*key) -> int:
    """A 63-bit seed hashed from the "/"-joined ``key`` parts."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, step): batches are reproducible and resumable."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) % (2 ** 63))


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_items, generator=step_generator(seed, epoch, -1))


def shard_size(batch_size: int, world_size: int) -> int:
    """b = B / G, the images each of G processes takes from a global batch of B (B % G != 0 is refused)."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {world_size} processes (WORLD_SIZE): "
                         f"each takes batch-size / {world_size} images of the global batch")
    return batch_size // world_size


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that process ``rank`` of ``world_size`` takes."""
    b = shard_size(batch_size, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return slice(rank * b, (rank + 1) * b)


def local_train_batches(data: "DataBundle", batch_size: int, epoch: int, seed: int, device, start_step: int = 0,
                        rank: int = 0, world_size: int = 1) -> Iterator:
    """This process's shard of every global batch of ``data.train_batches``: the dataset's own sharding when its
    ``train_batches`` takes ``rank``/``world_size``, else the global batch sliced (each process then loads and
    augments all B images). ``world_size == 1``: ``data.train_batches`` unchanged."""
    if world_size == 1:
        return data.train_batches(batch_size, epoch, seed, device, start_step=start_step)
    rows = shard_rows(batch_size, rank, world_size)
    if "world_size" in inspect.signature(data.train_batches).parameters:
        return data.train_batches(batch_size, epoch, seed, device, start_step=start_step, rank=rank,
                                  world_size=world_size)
    return (tuple(part[rows] for part in batch)
            for batch in data.train_batches(batch_size, epoch, seed, device, start_step=start_step))


def check_subset(subset: Optional[int], available: int, name: str) -> int:
    if subset is None:
        return available
    if subset < 2:
        raise ValueError(f"--subset must be at least 2 images, got {subset}")
    if subset > available:
        raise ValueError(f"--subset {subset} is larger than the {available} training images of {name}")
    return subset


@dataclass
class ImageTensors:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]


def check_splits(name: str, train: ImageTensors, test: ImageTensors, num_classes: int) -> None:
    """One-line ValueErrors for splits that would give silently wrong numbers: an empty split, labels outside
    0..num_classes − 1, test images of another shape (channels, rows, columns) than the training images."""
    for split, data in (("training", train), ("test", test)):
        if data.images.shape[0] == 0:
            raise ValueError(f"{name}: the {split} split holds no images")
        low, high = int(data.labels.min()), int(data.labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name}: {split} labels must lie in 0..{num_classes - 1}, found {low}..{high}")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"{name}: test images are {tuple(test.images.shape[1:])} (channels, rows, columns) but "
                         f"training images {tuple(train.images.shape[1:])}; both splits must have one shape")


def parse_classes(classes, num_classes: int, name: str) -> Tuple[int, ...]:
    """The sorted class ids of ``exclude_classes`` (comma-separated text such as "8,9", or a sequence of ints; None
    or empty: none). One-line ValueErrors for an id outside 0..num_classes − 1, or for removing so many classes
    that fewer than two are left to train on."""
    if classes is None:
        return ()
    if isinstance(classes, str):
        parts = [part.strip() for part in classes.split(",")]
        if not all(part.isdigit() for part in parts):
            raise ValueError(f"--exclude-classes must be comma-separated class ids such as 8,9, got {classes!r}")
        classes = [int(part) for part in parts]
    ids = sorted({int(c) for c in classes})
    outside = [c for c in ids if not 0 <= c < num_classes]
    if outside:
        raise ValueError(f"--exclude-classes: class {outside[0]} is outside 0..{num_classes - 1} ({name} has "
                         f"{num_classes} classes)")
    if num_classes - len(ids) < 2:
        raise ValueError(f"--exclude-classes removes {len(ids)} of the {num_classes} classes of {name}: at least "
                         f"two must be left to train on")
    return tuple(ids)


def split_classes(data: Optional[ImageTensors], classes: Tuple[int, ...]) -> Tuple[Optional[ImageTensors],
                                                                                    Optional[ImageTensors]]:
    """(the images of the other classes, the images of ``classes``) of a split, each in its original order;
    (None, None) for a missing split."""
    if data is None:
        return None, None
    out = torch.isin(data.labels, torch.tensor(classes, dtype=data.labels.dtype))
    return (ImageTensors(data.images[~out], data.labels[~out]), ImageTensors(data.images[out], data.labels[out]))


def carve_validation(train: ImageTensors, val_size: Optional[int], name: str) -> tuple:
    """(training images before the last ``val_size``, the last ``val_size`` as the validation split or None)."""
    if val_size is None:
        return train, None
    n = train.images.shape[0]
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 1 <= val_size <= n - 2:
        raise ValueError(f"--val-size must be an integer from 1 to {n - 2} (the {n} training images of {name} less "
                         f"two to train on), got {val_size!r}")
    cut = n - val_size
    return (ImageTensors(train.images[:cut], train.labels[:cut]),
            ImageTensors(train.images[cut:], train.labels[cut:]))


class DataBundle:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    num_train: int
    val = None  # the validation split (ImageTensors) when one is carved
    resolved_options: Dict[str, Any] = {}  # read only; a dataset that resolves settings sets its own

    @property
    def num_eval_train(self) -> int:
        """Labelled training images the evaluation uses (kNN neighbours, probe fit)."""
        return self.num_train

    def eval_image(self, path: str) -> torch.Tensor:
        """An image file as this dataset's evaluation batches hold it, before ``eval_normalise``: decoded, converted
        to ``in_channels``, resized (shorter side) to ``image_size`` and centre-cropped: uint8 [C, S, S]."""
        import torchvision.transforms.v2 as T
        from pyro_ncl.data.file_data import load_image
        resize = T.Compose([T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size), T.ToImage()])
        return resize(load_image(path, "L" if self.in_channels == 1 else "RGB"))

    def eval_normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A batch from ``eval_image`` [B, C, S, S] → normalised as the network sees it."""
        raise NotImplementedError
    outliers = None  # the test images of the held-out classes (ImageTensors), with --exclude-classes
    excluded_classes: Tuple[int, ...] = ()

    @property
    def eval_split(self) -> str:
        """The split the end-of-run evaluation scores: "val" when a validation split is carved, else "test"."""
        return "val" if self.val is not None else "test"

    def steps_per_epoch(self, batch_size: int) -> int:
        if batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2 (each image's views need negatives), got {batch_size}")
        if batch_size > self.num_train:
            raise ValueError(f"--batch-size {batch_size} is larger than the {self.num_train} training images")
        return self.num_train // batch_size

    def train_batches(self, batch_size: int, epoch: int, seed: int, device, start_step: int = 0) -> Iterator:
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int, device) -> Iterator:
        raise NotImplementedError


class InMemoryData(DataBundle):
    """Images held as one uint8 tensor (copied to the training device once); views made by ``BatchAugment`` on
    the device. Per step the host sends only the batch's indices and its augmentation parameters, each in one
    non-blocking copy: no host-device synchronisation."""

    def __init__(self, name: str, train: ImageTensors, test: ImageTensors, num_classes: int,
                 mean: Sequence[float], std: Sequence[float], subset: Optional[int] = None,
                 augment: Optional[BatchAugment] = None, val_size: Optional[int] = None,
                 val: Optional[ImageTensors] = None, exclude_classes=None, outliers: Optional[ImageTensors] = None):
        """``val_size``: carve the last V training images as the validation split; ``val``: a validation split
        made by the dataset itself (held out from ``train`` already). ``exclude_classes`` (text "8,9" or ids):
        remove those classes from training and validation and move their test images to the "outliers" split
        (``outliers``: that split made by the dataset itself, the classes then already out of ``test``)."""
        self.name, self.num_classes = name, num_classes
        if val is None:
            train, val = carve_validation(train, val_size, name)
        self.excluded_classes = parse_classes(exclude_classes, num_classes, name)
        if self.excluded_classes:
            (train, _), (val, _) = (split_classes(part, self.excluded_classes) for part in (train, val))
            test, split_off = split_classes(test, self.excluded_classes)
            outliers = outliers if outliers is not None else split_off
            if outliers.labels.numel() == 0:
                raise ValueError(f"{name}: the test split holds no image of the excluded classes "
                                 f"{','.join(map(str, self.excluded_classes))}")
        check_splits(name, train, test, num_classes)
        if val is not None:
            check_splits(name, train, val, num_classes)
        self.val, self.outliers = val, outliers
        n = check_subset(subset, train.images.shape[0], name)
        self.train = ImageTensors(train.images[:n], train.labels[:n])
        self.test = test
        self.in_channels, self.image_size = train.images.shape[1], train.images.shape[-1]
        self.num_train = n
        self.augment = augment or BatchAugment(self.image_size)
        self._normalise = Normalise(mean, std)
        self._device_cache = {}

    def _on(self, split: str, device) -> ImageTensors:
        key = (split, str(device))
        if key not in self._device_cache:
            data = getattr(self, split)
            self._device_cache[key] = ImageTensors(data.images.to(device), data.labels.to(device))
        return self._device_cache[key]

    def _gather(self, index: torch.Tensor, device) -> tuple:
        """Training indices [b] (CPU) → images uint8 [b, C, H, W] and labels [b] on ``device``."""
        data = self._on("train", device)
        index = to_device(index, device)
        return data.images[index], data.labels[index]

    def train_batches(self, batch_size, epoch, seed, device, start_step=0, rank=0, world_size=1):
        """``world_size`` > 1: process ``rank``'s rows of each global batch. The augmentation parameters are drawn
        for the whole global batch (row r for image r), so a process takes its rows of them and augments only its
        own images: the same views as one process."""
        order = epoch_permutation(self.num_train, seed, epoch)
        rows = shard_rows(batch_size, rank, world_size) if world_size > 1 else None
        for step in range(start_step, self.steps_per_epoch(batch_size)):
            index = order[step * batch_size:(step + 1) * batch_size]
            index = index if rows is None else index[rows]
            images, labels = self._gather(index, device)
            x = images.float().div_(255)
            params = draw(2, batch_size, step_generator(seed, epoch, step), device, rows)  # both views, one copy
            x1, x2 = (self._normalise(self.augment(x, params=p)) for p in params)
            yield x1, x2, labels, to_device(index, device)

    def eval_normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x)

    def eval_batches(self, split, batch_size, device):
        """Normalised images [b, C, H, W] and labels [b] of a split: "train", "val", "test" or "outliers" (the
        test images of the excluded classes)."""
        if split not in ("train", "val", "test", "outliers"):
            raise ValueError(f"unknown split {split!r}; expected train, val, test or outliers")
        if split == "val" and self.val is None:
            raise ValueError(f"{self.name} has no validation split (set --val-size)")
        if split == "outliers" and self.outliers is None:
            raise ValueError(f"{self.name} has no outlier split (set --exclude-classes)")
        data = self._on(split, device)
        for start in range(0, data.images.shape[0], batch_size):
            x = data.images[start:start + batch_size].float().div_(255)
            yield self._normalise(x), data.labels[start:start + batch_size]
