"""IDX reader (hand-written files, truncation) and the in-memory Fashion-MNIST bundle."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_ncl.data import DATASETS, DatasetNotFound
from pyro_ncl.data.idx import DEFAULT_ROOTS, read_idx

FASHION = Path(DEFAULT_ROOTS["fashion-mnist"])


def test_hand_written_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "tiny-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + array.tobytes())
    assert np.array_equal(read_idx(path), array)
    gz = tmp_path / "tiny-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert np.array_equal(read_idx(gz), array)


def test_truncated_and_bad_idx_files(tmp_path, fake_mnist):
    path = fake_mnist(tmp_path, train=10, test=1) / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="is truncated: expected 10 values .* found 7"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_fake_fashion_mnist_bundle(tmp_path, gz, fake_mnist):
    data = DATASETS["fashion-mnist"](root=str(fake_mnist(tmp_path / "fm", gz=gz)))
    assert (data.num_train, data.in_channels, data.image_size, data.num_classes) == (40, 1, 28, 10)
    x1, x2, y, index = next(data.train_batches(16, epoch=0, seed=0, device="cpu"))
    assert x1.shape == x2.shape == (16, 1, 28, 28) and torch.equal(y, index % 10)
    batches = list(data.train_batches(16, epoch=0, seed=0, device="cpu"))
    resumed = list(data.train_batches(16, epoch=0, seed=0, device="cpu", start_step=1))
    assert len(batches) == 2 and len(resumed) == 1
    assert all(torch.equal(a, b) for a, b in zip(resumed[0], batches[1]))
    assert all(torch.equal(a, b) for a, b in zip(next(data.train_batches(16, 0, 0, "cpu")), batches[0]))
    assert not torch.equal(next(data.train_batches(16, 0, 1, "cpu"))[3], batches[0][3])
    x, y = next(data.eval_batches("test", 100, "cpu"))
    assert x.shape == (12, 1, 28, 28) and y.tolist() == [i % 10 for i in range(12)]


def test_missing_idx_files(tmp_path):
    with pytest.raises(DatasetNotFound, match="is not a folder"):
        DATASETS["fashion-mnist"](root=str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="train-images-idx3-ubyte"):
        DATASETS["fashion-mnist"](root=str(tmp_path / "empty"))


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST IDX files not found in {FASHION}")
def test_real_fashion_mnist():
    data = DATASETS["fashion-mnist"](subset=1000)
    assert data.num_train == 1000 and data.test.images.shape == (10000, 1, 28, 28)
    x1, _, _, _ = next(data.train_batches(64, epoch=0, seed=0, device="cpu"))
    assert x1.shape == (64, 1, 28, 28) and -1.0 < float(x1.min()) and float(x1.max()) < 2.1
