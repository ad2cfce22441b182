"""MNIST and Fashion-MNIST from the standard IDX files (``*-idx3-ubyte`` / ``*-idx1-ubyte``, optionally .gz)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from pyro_ncl.data.base import DATASETS, DatasetNotFound, InMemoryData, ImageTensors, check_num_workers, reject_options

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEFAULT_ROOTS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "data/mnist"}
HOW_TO_GET = {"fashion-mnist": "`apt-get install dataset-fashion-mnist` puts it in /usr/share/datasets/fashion-mnist",
              "mnist": "download the four IDX files from the MNIST page into that folder"}
STATS = {"fashion-mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (magic: two zero bytes, a type byte 0x08 for uint8, the number of dims, big-endian sizes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values for shape {shape}, found {body.size}")
    return body.reshape(shape)


def _find(root: Path, stem: str, name: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DatasetNotFound(f"{name} not found: looked for {stem}[.gz] in {root}; {HOW_TO_GET[name]}, "
                          f"or pass --data-root")


def load_idx_split(root: Path, split: str, name: str) -> ImageTensors:
    images_file, labels_file = (_find(root, stem, name) for stem in FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} holds {images.shape[0]} images but {labels_file} {labels.shape[0]} labels")
    return ImageTensors(images, labels)


def _idx_dataset(name: str):
    def build(root=None, subset=None, num_workers: int = 0, **options) -> InMemoryData:
        """``num_workers`` is accepted (and checked) for a uniform interface: in-memory data need no workers."""
        reject_options(name, options)
        check_num_workers(num_workers)
        folder = Path(root or DEFAULT_ROOTS[name])
        if not folder.is_dir():
            raise DatasetNotFound(f"{name} not found: {folder} is not a folder; {HOW_TO_GET[name]}, or pass --data-root")
        mean, std = STATS[name]
        return InMemoryData(name, load_idx_split(folder, "train", name), load_idx_split(folder, "test", name),
                            num_classes=10, mean=mean, std=std, subset=subset)
    return build


DATASETS.register("fashion-mnist")(_idx_dataset("fashion-mnist"))
DATASETS.register("mnist")(_idx_dataset("mnist"))
