"""STL-10 (``stl10``) from torchvision's binary format: ``root/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin``.

X files are uint8 with each image stored as 3 planes of 96×96 in column-major order (torchvision reads them with
``reshape(N, 3, 96, 96).transpose(0, 1, 3, 2)``, as we do); y files hold labels 1..10 (→ 0..9).

Pre-training draws from train (5,000 labelled) + unlabeled (100,000, memory-mapped, label -1) when
``use_unlabeled=True`` (default); evaluation uses the labelled train split and the test split.
Options: ``use_unlabeled`` (True), ``download`` (False), ``num_workers`` (ignored). ``subset`` keeps the first N
images of the pool (labelled first). Views: 96 px, the 32 px recipe's crop/jitter/grayscale/flip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pyro_ncl.backends import to_device
from pyro_ncl.data.base import DATASETS, ImageTensors, InMemoryData, check_num_workers, check_subset, reject_options
from pyro_ncl.data.base import torchvision_folder
from pyro_ncl.data.cifar import cifar_augment

NAME, FOLDER, SIZE = "stl10", "stl10_binary", 96
IMAGE_BYTES = 3 * SIZE * SIZE
DEFAULT_ROOT = "data"
MEAN, STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)


def _num_images(path: Path) -> int:
    size = path.stat().st_size
    if size % IMAGE_BYTES:
        raise ValueError(f"{path} is truncated: {size} bytes is not a multiple of {IMAGE_BYTES} (3×96×96)")
    return size // IMAGE_BYTES


def to_chw(raw: np.ndarray) -> np.ndarray:
    """File layout [N, 3, W, H] (column-major planes) → [N, 3, H, W], contiguous."""
    return np.ascontiguousarray(raw.reshape(-1, 3, SIZE, SIZE).transpose(0, 1, 3, 2))


def read_split(where: Path, split: str) -> ImageTensors:
    """``{split}_X.bin`` / ``{split}_y.bin`` → images uint8 [N, 3, 96, 96], labels int64 [N] in 0..9."""
    x_path, y_path = where / f"{split}_X.bin", where / f"{split}_y.bin"
    n = _num_images(x_path)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if labels.shape[0] != n:
        raise ValueError(f"{x_path} holds {n} images but {y_path} {labels.shape[0]} labels")
    if n and not (0 <= labels.min() and labels.max() <= 9):
        raise ValueError(f"{y_path}: labels must lie in 1..10, found {labels.min() + 1}..{labels.max() + 1}")
    images = to_chw(np.fromfile(x_path, dtype=np.uint8))
    return ImageTensors(torch.from_numpy(images), torch.from_numpy(labels))


def open_unlabeled(where: Path) -> np.memmap:
    """``unlabeled_X.bin`` as a read-only memmap [N, 3, W, H] (file layout; use ``to_chw`` on what you read)."""
    path = where / "unlabeled_X.bin"
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(_num_images(path), 3, SIZE, SIZE))


class STL10Data(InMemoryData):
    """Labelled train/test in memory (``self.train``, ``self.test``: eval splits); the pre-training pool is
    ``self.train`` followed by ``self.unlabeled`` (memmap, label -1), read per batch."""

    def __init__(self, train: ImageTensors, test: ImageTensors, unlabeled: Optional[np.memmap],
                 subset: Optional[int] = None):
        labelled, extra = train.images.shape[0], 0 if unlabeled is None else unlabeled.shape[0]
        n = check_subset(subset, labelled + extra, NAME)
        super().__init__(NAME, train, test, num_classes=10, mean=MEAN, std=STD, subset=min(n, labelled),
                         augment=cifar_augment(SIZE))
        self.unlabeled = unlabeled[:n - labelled] if n > labelled else None
        self.num_train = n

    def _gather(self, index: torch.Tensor, device) -> tuple:
        """Pool indices [b] (CPU) → images uint8 [b, 3, 96, 96] and labels [b] (-1 for unlabeled) on ``device``:
        the batch is assembled on the host (labelled images from memory, unlabeled ones from the memmap) and sent
        in one non-blocking copy each (no host-device synchronisation)."""
        index, first_unlabeled = index.numpy(), self.train.images.shape[0]
        labelled = index < first_unlabeled
        images = np.empty((index.size, 3, SIZE, SIZE), dtype=np.uint8)
        labels = np.full(index.size, -1, dtype=np.int64)
        images[labelled] = self.train.images.numpy()[index[labelled]]
        labels[labelled] = self.train.labels.numpy()[index[labelled]]
        rows = index[~labelled] - first_unlabeled
        if rows.size:
            order = np.argsort(rows)  # sorted reads are kinder to the page cache
            block = np.empty((rows.size, 3, SIZE, SIZE), dtype=np.uint8)
            block[order] = to_chw(self.unlabeled[rows[order]])
            images[~labelled] = block
        return to_device(torch.from_numpy(images), device), to_device(torch.from_numpy(labels), device)


def _download(root: Path) -> None:
    import torchvision.datasets as tvd
    tvd.STL10(str(root), split="train+unlabeled", download=True)


@DATASETS.register(NAME)
def stl10(root=None, subset=None, use_unlabeled: bool = True, download: bool = False, num_workers: int = 0,
          **options) -> STL10Data:
    reject_options(NAME, options)
    check_num_workers(num_workers)
    needed = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"] + (["unlabeled_X.bin"] if use_unlabeled else [])
    where = torchvision_folder(NAME, Path(root or DEFAULT_ROOT), FOLDER, needed,
                               download=_download if download else None,
                               hints={"unlabeled_X.bin": " (or pass use_unlabeled=False)"})
    unlabeled = open_unlabeled(where) if use_unlabeled else None
    return STL10Data(read_split(where, "train"), read_split(where, "test"), unlabeled, subset=subset)
