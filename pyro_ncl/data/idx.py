"""The IDX reader of MNIST and Fashion-MNIST (``*-idx3-ubyte`` / ``*-idx1-ubyte``, optionally .gz), and their dataset
factory; ``mnist.py`` and ``fashion_mnist.py`` register it (this helper module registers nothing)."""
from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path

import numpy as np
import torch

from pyro_ncl.data.base import (DatasetNotFound, InMemoryData, ImageTensors, check_num_workers,
                                error_reason, reject_options)

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "data/mnist"}
HOW_TO_GET = {"fashion-mnist": "`apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist",
              "mnist": "download the four IDX files from the MNIST page into that folder"}
STATS = {"fashion-mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}
MAX_GZIP_RATIO = 1032  # deflate expands a byte to at most ~1032


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (magic: two zero bytes, a type byte 0x08 for uint8, the number of dims, big-endian sizes;
    ``.gz``: gzip-compressed). Refused with a one-line ValueError naming the file, before its body is read:
    anything but a regular file (a FIFO would block, a link to /dev/zero never ends), a bad magic number, a header
    that claims more or less data than the file holds; and a gzip file that is damaged or truncated."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file ({_file_kind(info.st_mode)}); expected an IDX file")
    compressed = path.suffix == ".gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {head.hex() or 'none'})")
            ndim = head[3]
            sizes = f.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ValueError(f"{path} is truncated: its header ends before the sizes of its {ndim} dimensions")
            shape = tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(ndim))
            count = math.prod(shape)
            available = info.st_size - 4 - 4 * ndim
            if not compressed and available < count:
                raise ValueError(f"{path} is truncated: expected {count} values for shape {shape}, found {available}")
            if not compressed and available > count:
                raise ValueError(f"{path} holds {available} values, more than its header's shape {shape} says "
                                 f"({count})")
            if compressed and count > MAX_GZIP_RATIO * info.st_size:
                raise ValueError(f"{path}: its header claims shape {shape} ({count} values), more than a gzip file "
                                 f"of {info.st_size} bytes can hold")
            body = f.read(count)
            if len(body) < count:
                raise ValueError(f"{path} is truncated: expected {count} values for shape {shape}, found {len(body)}")
            if compressed and f.read(1):
                raise ValueError(f"{path} holds more values than its header's shape {shape} ({count}) says")
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else error_reason(err)
        raise ValueError(f"cannot read {path}: {reason}") from None
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _find(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFound(f"{name} not found: looked for {stem}[.gz] in {root}; {HOW_TO_GET[name]}, "
                          f"or pass --data-root")


def load_idx_split(root: Path, split: str, name: str) -> ImageTensors:
    images_file, labels_file = (_find(root, stem, name) for stem in FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or 0 in images.shape[1:]:
        raise ValueError(f"{images_file} holds an array of shape {images.shape}; expected images [N, rows, columns]")
    if labels.ndim != 1:
        raise ValueError(f"{labels_file} holds an array of shape {labels.shape}; expected labels [N]")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} holds {images.shape[0]} images but {labels_file} {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError(f"{images_file} holds no images")
    return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def idx_dataset(name: str):
    """The factory of the IDX dataset ``name`` (``mnist`` or ``fashion-mnist``)."""
    def build(root=None, subset=None, num_workers: int = 0, val_size=None, exclude_classes=None,
              **options) -> InMemoryData:
        """``num_workers`` is accepted (and checked) for a uniform interface: in-memory data need no workers."""
        reject_options(name, options)
        check_num_workers(num_workers)
        folder = Path(root or DEFAULT_ROOTS[name])
        if not folder.is_dir():
            raise DatasetNotFound(f"{name} not found: {folder} is not a folder; {HOW_TO_GET[name]}, or pass --data-root")
        mean, std = STATS[name]
        return InMemoryData(name, load_idx_split(folder, "train", name), load_idx_split(folder, "test", name),
                            num_classes=10, mean=mean, std=std, subset=subset, val_size=val_size,
                            exclude_classes=exclude_classes)
    return build
