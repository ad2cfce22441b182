"""ImageNet-100 from fake ImageFolder trees: class filtering, labels, errors, determinism, unreadable images."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pyro_ncl.data import DATASETS, DatasetNotFound
from pyro_ncl.data.augment import BatchAugment
from pyro_ncl.data.file_data import ImageReadError
from pyro_ncl.data.imagenet100 import imagenet100_classes

WNIDS = imagenet100_classes()
DISTRACTORS = ["n99999991", "n99999992"]


def _write_jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, quality=90)


def _tree(root: Path, wnids, per_class={"train": 2, "val": 1}) -> Path:
    for split, count in per_class.items():
        for c, wnid in enumerate(wnids):
            for i in range(count):
                _write_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", seed=(split == "val") * 10_000 + c * 10 + i)
    return root


@pytest.fixture(scope="module")
def full_root(tmp_path_factory) -> Path:
    """An ImageNet-1k-like root: the 100 listed classes plus two distractor classes."""
    return _tree(tmp_path_factory.mktemp("imagenet"), WNIDS + DISTRACTORS)


def _load(root, **kw):
    return DATASETS["imagenet100"](root=str(root), image_size=32, **kw)


def test_classes_file_lists_the_cmc_subset():
    assert len(WNIDS) == 100 == len(set(WNIDS))
    assert WNIDS[:3] == ["n02869837", "n01749939", "n02488291"]


def test_only_listed_classes_and_consistent_labels(full_root):
    data = _load(full_root)
    assert (data.num_classes, data.num_train, len(data.test_samples)) == (100, 200, 100)
    for samples in (data.train_samples, data.test_samples):
        for path, label in samples:
            assert Path(path).parent.name == WNIDS[label]
            assert Path(path).parent.name not in DISTRACTORS


def test_batches_shapes_ranges_and_determinism(full_root):
    data = _load(full_root)
    first = list(data.train_batches(8, epoch=1, seed=3, device="cpu"))
    assert len(first) == data.steps_per_epoch(8) == 25
    x1, x2, y, index = first[0]
    assert x1.shape == x2.shape == (8, 3, 32, 32) and x1.dtype == torch.float32
    assert not torch.equal(x1, x2)
    assert y.dtype == index.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 100
    assert all(data.train_samples[int(i)][1] == int(label) for i, label in zip(index, y))
    assert -2.2 < float(x1.min()) and float(x1.max()) < 2.7  # ImageNet-normalised [0, 1]
    again = list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=23))
    assert len(again) == 2
    for a, b in zip(first[23:], again):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    other = next(data.train_batches(8, epoch=2, seed=3, device="cpu"))
    assert not torch.equal(other[3], first[0][3])
    x, y = next(data.eval_batches("test", 16, "cpu"))
    assert x.shape == (16, 3, 32, 32)
    assert y.tolist() == [label for _, label in data.test_samples[:16]]
    assert sum(b[0].shape[0] for b in data.eval_batches("train", 64, "cpu")) == 200


def test_workers_give_the_same_batches(full_root):
    rng_state = torch.get_rng_state()
    serial = list(_load(full_root).train_batches(16, epoch=0, seed=5, device="cpu", start_step=10))
    assert torch.equal(rng_state, torch.get_rng_state())  # the global RNG is left alone
    data = _load(full_root, num_workers=2)
    for _ in range(2):  # the second pass reuses the persistent workers
        parallel = list(data.train_batches(16, epoch=0, seed=5, device="cpu", start_step=10))
        assert len(parallel) == len(serial) == 2
        for a, b in zip(serial, parallel):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    data.close()


def test_subset_spans_classes(full_root):
    data = _load(full_root, subset=50)
    assert data.num_train == 50 and len({label for _, label in data.train_samples}) > 20


def test_missing_split_and_missing_class_are_named(tmp_path, full_root):
    root = tmp_path / "in100"
    shutil.copytree(full_root / "train", root / "train")
    with pytest.raises(DatasetNotFound, match=f"no val folder at {root / 'val'}"):
        _load(root)
    shutil.copytree(full_root / "val", root / "val")
    shutil.rmtree(root / "val" / WNIDS[1])
    with pytest.raises(DatasetNotFound) as err:
        _load(root)
    assert f"class {WNIDS[1]} missing from {root / 'val'} (1 of 100 classes missing)" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetNotFound, match="is not a folder"):
        _load(tmp_path / "nowhere")


def test_bad_options():
    with pytest.raises(ValueError, match="image_size"):
        DATASETS["imagenet100"](root="/nonexistent", image_size=4)
    with pytest.raises(ValueError, match="unknown option.*colour"):
        DATASETS["imagenet100"](root="/nonexistent", colour=True)


def test_truncated_jpeg_named_or_skipped(tmp_path, full_root):
    root = tmp_path / "in100"
    shutil.copytree(full_root, root)
    bad = root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    for workers in (0, 2):
        data = _load(root, num_workers=workers)
        with pytest.raises(ImageReadError) as err:
            for _ in data.eval_batches("train", 64, "cpu"):
                pass
        assert str(err.value).startswith(f"cannot read image {bad}: ") and "\n" not in str(err.value)
        data.close()
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        data = _load(root, skip_bad_images=True)
    assert data.num_skipped == 1 and data.num_train == 199
    assert str(bad) not in {p for p, _ in data.train_samples}
    assert sum(b[0].shape[0] for b in data.train_batches(32, 0, 0, "cpu")) == 6 * 32


def test_device_augmentation_option(full_root):
    """--gpu-augment: uint8 crops from the workers, colour/blur in batches on the device; reproducible per step."""
    data = _load(full_root, gpu_augment=True)
    assert data.device_augment is not None
    first = list(data.train_batches(8, epoch=1, seed=3, device="cpu"))
    x1, x2, y, index = first[0]
    assert x1.shape == x2.shape == (8, 3, 32, 32) and x1.dtype == torch.float32
    assert not torch.equal(x1, x2) and x1.abs().max() < 5  # normalised, two different views
    again = list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=1))
    assert torch.equal(again[0][0], first[1][0]) and torch.equal(again[0][1], first[1][1])


def test_device_augmentation_shards_make_the_global_batch(full_root):
    """world_size 2: each rank's rows (views, labels, indices) are those of the single-process batch."""
    data = _load(full_root, gpu_augment=True)
    single = list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=23))
    shards = [list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=23, rank=r, world_size=2))
              for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 2
    for whole, first, second in zip(single, *shards):
        assert all(torch.equal(w, torch.cat([u, v])) for w, u, v in zip(whole, first, second))


def test_batched_blur_matches_a_per_image_convolution():
    aug = BatchAugment(16, blur_prob=1.0, blur_sigma=(1.0, 1.0), blur_kernel=5, jitter_prob=0.0)
    x = torch.rand(2, 3, 16, 16)
    got = aug.photometric(x, torch.Generator().manual_seed(0))
    taps = torch.exp(-0.5 * torch.arange(-2.0, 3.0) ** 2)
    k2 = (taps[:, None] * taps[None, :]) / taps.sum() ** 2
    ref = F.conv2d(F.pad(x.reshape(6, 1, 16, 16), (2, 2, 2, 2), mode="reflect"), k2[None, None]).reshape(2, 3, 16, 16)
    assert torch.allclose(got, ref, atol=1e-5)
