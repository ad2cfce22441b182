"""The CIFAR reader of CIFAR-10 / CIFAR-100 (torchvision's on-disk format, held in memory), their dataset factory
and the small-image augmentation; ``cifar10.py`` and ``cifar100.py`` register the datasets (this helper module
registers nothing).

``root`` (default ``data``) holds ``cifar-10-batches-py/{data_batch_1..5, test_batch}`` or
``cifar-100-python/{train, test}``: pickled dicts with ``data`` uint8 [N, 3072] (the R, G, B planes of a 32×32
image, each row-major) and ``labels`` / ``fine_labels``. ``root`` may also be that folder itself.

Options: ``download`` (False: fetch torchvision's archive first), ``num_workers`` (ignored: views are made on the
device), ``val_size`` and ``exclude_classes`` (see ``pyro_ncl.data.base``). The batches are read by
``pyro_ncl.safe_unpickle`` (dicts, lists, strings, bytes, numbers and numpy arrays only): a crafted batch that would
run code is refused by name, without running it.
Views: the authors' 32 px recipe (random resized crop scale 0.08–1, flip, colour jitter 0.4 with p 0.8, grayscale
0.2) through ``BatchAugment`` (no hue jitter).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pyro_ncl.data.augment import BatchAugment
from pyro_ncl.data.base import ImageTensors, InMemoryData, check_num_workers, error_reason, reject_options
from pyro_ncl.data.base import torchvision_folder
from pyro_ncl.safe_unpickle import load_data_pickle

DEFAULT_ROOT = "data"
SPECS = {  # name: (folder, train files, test files, label key, classes, mean, std, torchvision class)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR100"),
}


def cifar_augment(size: int = 32) -> BatchAugment:
    """The authors' small-image recipe (SimCLR CIFAR): crop 0.08–1, flip, jitter 0.4 p 0.8, grayscale 0.2."""
    return BatchAugment(size, scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, jitter_prob=0.8,
                        grayscale_prob=0.2)


def read_cifar_batch(path: Path, label_key: str) -> ImageTensors:
    """One pickled batch → images uint8 [N, 3, 32, 32], labels int64 [N] (read without running code: a pickle
    naming anything but numpy's array constructors is refused)."""
    entry = load_data_pickle(path, "CIFAR batch", reason=error_reason)
    if not isinstance(entry, dict):
        raise ValueError(f"{path} is not a CIFAR batch: it holds a {type(entry).__name__}, not a dict")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"{path} lacks the 'data' and {label_key!r} entries of a CIFAR batch")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(entry[label_key]):
        raise ValueError(f"{path}: expected data of shape [N, 3072] with N labels, got {data.shape} and "
                         f"{len(entry[label_key])} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageTensors(images, torch.as_tensor(entry[label_key], dtype=torch.int64))


def _concat(parts: Sequence[ImageTensors]) -> ImageTensors:
    return ImageTensors(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def _download(name: str, root: Path) -> None:
    """torchvision's archive for ``name``, fetched (its checksum checked) and unpacked into ``root``; the batches are
    not opened here (torchvision's dataset class would ``pickle.load`` them), only by ``read_cifar_batch``."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive
    cls = getattr(tvd, SPECS[name][-1])
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def cifar_dataset(name: str):
    """The factory of the CIFAR dataset ``name`` (``cifar10`` or ``cifar100``)."""
    folder, train_files, test_files, label_key, classes, mean, std, _ = SPECS[name]

    def build(root=None, subset=None, download: bool = False, num_workers: int = 0, val_size=None,
              exclude_classes=None, **options) -> InMemoryData:
        reject_options(name, options)
        check_num_workers(num_workers)
        where = torchvision_folder(name, Path(root or DEFAULT_ROOT), folder, train_files + test_files,
                                   download=partial(_download, name) if download else None)
        train = _concat([read_cifar_batch(where / s, label_key) for s in train_files])
        test = _concat([read_cifar_batch(where / s, label_key) for s in test_files])
        for split in (train, test):
            if split.labels.numel() and not 0 <= int(split.labels.min()) <= int(split.labels.max()) < classes:
                raise ValueError(f"{name}: labels in {where} must lie in 0..{classes - 1}, found "
                                 f"{int(split.labels.min())}..{int(split.labels.max())}")
        return InMemoryData(name, train, test, num_classes=classes, mean=mean, std=std, subset=subset,
                            augment=cifar_augment(32), val_size=val_size, exclude_classes=exclude_classes)
    build.__doc__ = f"{name}: (root=None, subset=None, download=False, num_workers=0) → InMemoryData, 32 px RGB."
    return build
