"""CIFAR-10/100 pickles and STL-10 binaries written in torchvision's format, read back in the right orientation."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_ncl.data import DATASETS, DatasetNotFound


def pattern(n: int, size: int, offset: int = 0) -> np.ndarray:
    """uint8 [n, 3, size, size]: channel 0 = row index, channel 1 = column index, channel 2 = image number."""
    rows = np.broadcast_to(np.arange(size)[:, None], (size, size))
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    out[:, 0], out[:, 1] = rows, rows.T
    out[:, 2] = (np.arange(n) + offset)[:, None, None]
    return out


def _pickle(path: Path, images: np.ndarray, labels, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {b"data": images.reshape(len(images), -1), key.encode(): list(labels), b"batch_label": b"fake"}
    path.write_bytes(pickle.dumps(entry))


def write_cifar10(root: Path, per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    for b in range(5):
        _pickle(folder / f"data_batch_{b + 1}", pattern(per_batch, 32, b * per_batch),
                [(b * per_batch + i) % 10 for i in range(per_batch)], "labels")
    _pickle(folder / "test_batch", pattern(6, 32, 100), range(6), "labels")


def check_orientation(images: torch.Tensor, offset: int = 0) -> None:
    assert torch.equal(images, torch.from_numpy(pattern(images.shape[0], images.shape[-1], offset)))
    assert images[0, 0, 5, 0] == 5 and images[0, 1, 0, 5] == 5  # channel 0 varies down the rows


def test_cifar10_round_trip_and_batches(tmp_path):
    write_cifar10(tmp_path)
    data = DATASETS["cifar10"](root=str(tmp_path))
    assert (data.num_train, data.num_classes, data.in_channels, data.image_size) == (20, 10, 3, 32)
    check_orientation(data.train.images)
    check_orientation(data.test.images, offset=100)
    assert data.train.labels.tolist() == [i % 10 for i in range(20)]
    assert data.augment.scale == (0.08, 1.0) and data.augment.grayscale_prob == 0.2
    x1, x2, y, index = next(data.train_batches(8, epoch=0, seed=1, device="cpu"))
    assert x1.shape == x2.shape == (8, 3, 32, 32) and torch.equal(y, data.train.labels[index])
    again = next(data.train_batches(8, epoch=0, seed=1, device="cpu", start_step=1))
    second = list(data.train_batches(8, epoch=0, seed=1, device="cpu"))[1]
    assert all(torch.equal(a, b) for a, b in zip(again, second))
    # the root may also be the batches folder itself
    assert DATASETS["cifar10"](root=str(tmp_path / "cifar-10-batches-py")).num_train == 20


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    _pickle(folder / "train", pattern(12, 32), [99 - i for i in range(12)], "fine_labels")
    _pickle(folder / "test", pattern(3, 32, 50), [0, 1, 2], "fine_labels")
    data = DATASETS["cifar100"](root=str(tmp_path), subset=10)
    assert (data.num_train, data.num_classes) == (10, 100)
    check_orientation(data.train.images)
    assert data.train.labels.tolist() == [99 - i for i in range(10)]
    x, y = next(data.eval_batches("test", 8, "cpu"))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 2]


def test_cifar_missing_and_bad_files(tmp_path):
    with pytest.raises(DatasetNotFound, match="no data_batch_1 in .*cifar-10-batches-py; pass --download"):
        DATASETS["cifar10"](root=str(tmp_path))
    folder = tmp_path / "cifar-100-python"
    _pickle(folder / "train", np.zeros((2, 3, 16, 16), np.uint8), [0, 1], "fine_labels")
    _pickle(folder / "test", pattern(2, 32), [0, 1], "fine_labels")
    with pytest.raises(ValueError, match=r"expected data of shape \[N, 3072\]"):
        DATASETS["cifar100"](root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown option"):
        DATASETS["cifar10"](root=str(tmp_path), hue=0.1)


def test_cifar_download_fetches_the_archive_without_unpickling_it(tmp_path, monkeypatch):
    """--download fetches and unpacks torchvision's archive (checksum checked) and never instantiates torchvision's
    dataset class, whose constructor would ``pickle.load`` the batches: only the safe unpickler reads them."""
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, root, filename, md5))
        write_cifar10(Path(root))

    class Refused:
        def __init__(self, *args, **kwargs):
            raise AssertionError("torchvision's CIFAR10 would unpickle the batches")

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(tvd, "CIFAR10", type("CIFAR10", (Refused,), {
        "url": tvd.CIFAR10.url, "filename": tvd.CIFAR10.filename, "tgz_md5": tvd.CIFAR10.tgz_md5}))
    assert DATASETS["cifar10"](root=str(tmp_path), download=True).num_train == 20
    assert calls == [(tvd.CIFAR10.url, str(tmp_path), "cifar-10-python.tar.gz", tvd.CIFAR10.tgz_md5)]


def write_stl(root: Path, train: int = 6, test: int = 4, unlabeled: int = 10) -> Path:
    """torchvision layout: per image, 3 planes stored column-major, i.e. the bytes of [N, 3, W, H]."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, n, offset in (("train", train, 0), ("test", test, 50), ("unlabeled", unlabeled, 100)):
        (folder / f"{split}_X.bin").write_bytes(pattern(n, 96, offset).transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(bytes((i % 10) + 1 for i in range(n)))
    return folder


def test_stl10_orientation_pool_and_memmap(tmp_path):
    write_stl(tmp_path)
    data = DATASETS["stl10"](root=str(tmp_path))
    assert (data.num_train, data.num_classes, data.image_size) == (16, 10, 96)
    check_orientation(data.train.images)
    check_orientation(data.test.images, offset=50)
    assert data.train.labels.tolist() == [0, 1, 2, 3, 4, 5]  # 1..10 → 0..9
    assert isinstance(data.unlabeled, np.memmap)
    images, labels = data._gather(torch.arange(16), "cpu")
    check_orientation(images[6:], offset=100)
    assert labels.tolist() == list(range(6)) + [-1] * 10
    batches = list(data.train_batches(4, epoch=0, seed=2, device="cpu"))
    assert len(batches) == 4 and batches[0][0].shape == (4, 3, 96, 96)
    index = torch.cat([b[3] for b in batches])
    assert sorted(index.tolist()) == list(range(16))
    y = torch.cat([b[2] for b in batches])
    assert torch.equal(y, torch.where(index < 6, index, torch.tensor(-1)))
    resumed = list(data.train_batches(4, epoch=0, seed=2, device="cpu", start_step=2))
    assert all(torch.equal(a, b) for a, b in zip(resumed[0], batches[2]))
    assert sum(x.shape[0] for x, _ in data.eval_batches("train", 4, "cpu")) == 6  # labelled train only
    assert sum(x.shape[0] for x, _ in data.eval_batches("test", 4, "cpu")) == 4


def test_stl10_without_unlabeled_and_subset(tmp_path):
    folder = write_stl(tmp_path)
    assert DATASETS["stl10"](root=str(tmp_path), use_unlabeled=False).num_train == 6
    small = DATASETS["stl10"](root=str(folder), subset=8)
    assert small.num_train == 8 and small.unlabeled.shape[0] == 2
    assert DATASETS["stl10"](root=str(tmp_path), subset=4).train.images.shape[0] == 4
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(DatasetNotFound, match="no unlabeled_X.bin .*use_unlabeled=False"):
        DATASETS["stl10"](root=str(tmp_path))
    with open(folder / "test_X.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(ValueError, match="test_X.bin is truncated"):
        DATASETS["stl10"](root=str(tmp_path), use_unlabeled=False)
