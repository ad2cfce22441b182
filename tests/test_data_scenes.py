"""Composed-background benchmark: determinism, the two labels, spurious correlation, background leakage."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pyro_ncl.data import DATASETS, DatasetNotFound
from pyro_ncl.data.idx import DEFAULT_ROOTS
from pyro_ncl.data.scenes import BACKGROUNDS, background_leakage

FASHION = Path(DEFAULT_ROOTS["fashion-mnist"])


@pytest.fixture(scope="module")
def items(tmp_path_factory, fake_mnist) -> str:
    """Fake Fashion-MNIST IDX files: 5000 train and 600 test items (random pixels, labels i % 10)."""
    return str(fake_mnist(tmp_path_factory.mktemp("fm"), train=5000, test=600))


def chi_square(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's chi-square statistic of the contingency table of two label vectors."""
    table = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    table.index_put_((a, b), torch.ones(a.shape[0], dtype=torch.float64), accumulate=True)
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_deterministic_for_a_seed(items):
    a = DATASETS["scenes"](root=items, subset=300, seed=7)
    b = DATASETS["scenes"](root=items, subset=300, seed=7)
    c = DATASETS["scenes"](root=items, subset=300, seed=8)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train_background, b.train_background)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.equal(a.train.labels, c.train.labels)  # same items, new scenes
    bigger = DATASETS["scenes"](root=items, subset=4500, seed=7)  # image i does not depend on the subset
    assert torch.equal(bigger.train.images[:300], a.train.images)
    assert torch.equal(bigger.train_background[:300], a.train_background)


def test_shapes_labels_and_batches(items):
    data = DATASETS["scenes"](root=items, subset=256)
    assert (data.num_train, data.in_channels, data.image_size, data.num_classes) == (256, 3, 32, 10)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (256, 3, 32, 32)
    assert data.test.images.shape == (600, 3, 32, 32) and data.test_background.shape == (600,)
    assert data.train_background.shape == (256,) and set(data.train_background.tolist()) == set(range(5))
    assert data.background_names == list(BACKGROUNDS)
    x1, x2, y, index = next(data.train_batches(64, epoch=0, seed=0, device="cpu"))
    assert x1.shape == x2.shape == (64, 3, 32, 32) and torch.equal(y, data.train.labels[index])
    resumed = next(data.train_batches(64, epoch=0, seed=0, device="cpu", start_step=2))
    third = list(data.train_batches(64, epoch=0, seed=0, device="cpu"))[2]
    assert all(torch.equal(u, v) for u, v in zip(resumed, third))
    x, y = next(data.eval_batches("test", 600, "cpu"))
    assert x.shape == (600, 3, 32, 32) and abs(float(x.mean())) < 0.3
    # backgrounds of one type vary (phase, colour) and the item is visible: images are all different
    same_type = data.train.images[data.train_background == 0]
    assert len({tuple(img.flatten()[:64].tolist()) for img in same_type}) == same_type.shape[0]


def test_labels_independent_by_default_and_correlated_on_request(items):
    free = DATASETS["scenes"](root=items, subset=4000)
    # 9 × 4 = 36 degrees of freedom: the statistic is ≈ 36 ± 8.5 under independence
    assert chi_square(free.train.labels, free.train_background) < 80
    assert abs((free.train_background == free.train.labels % 5).float().mean().item() - 0.2) < 0.03
    tied = DATASETS["scenes"](root=items, subset=4000, spurious_correlation=0.9)
    own = (tied.train_background == tied.train.labels % 5).float().mean().item()
    assert abs(own - (0.9 + 0.1 / 5)) < 0.03 and chi_square(tied.train.labels, tied.train_background) > 1000
    assert chi_square(tied.test.labels, tied.test_background) < 80  # test stays independent by default
    both = DATASETS["scenes"](root=items, subset=100, spurious_correlation=1.0, test_spurious_correlation=1.0,
                              num_backgrounds=4)
    assert torch.equal(both.test_background, both.test.labels % 4) and both.background_names == list(BACKGROUNDS[:4])


def test_bad_options(items, tmp_path):
    with pytest.raises(ValueError, match="spurious_correlation must be a probability in \\[0, 1\\], got 1.5"):
        DATASETS["scenes"](root=items, spurious_correlation=1.5)
    with pytest.raises(ValueError, match="num_backgrounds"):
        DATASETS["scenes"](root=items, num_backgrounds=9)
    with pytest.raises(DatasetNotFound, match="Fashion-MNIST"):
        DATASETS["scenes"](root=str(tmp_path / "none"))


def test_background_leakage(items):
    pytest.importorskip("pyro_ncl.probes")
    data = DATASETS["scenes"](root=items, subset=1000)
    gen = torch.Generator().manual_seed(0)

    def onehot(labels, classes, noise=0.1):
        return F.one_hot(labels, classes).float() + noise * torch.randn(labels.shape[0], classes, generator=gen)

    leaky = background_leakage(onehot(data.train_background, 5), data.train_background,
                               onehot(data.test_background, 5), data.test_background, epochs=10)
    assert leaky > 0.95
    clean = background_leakage(onehot(data.train.labels, 10), data.train_background,
                               onehot(data.test.labels, 10), data.test_background, epochs=10)
    assert clean < 0.4  # class features carry no background: near chance (0.2)


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST IDX files not found in {FASHION}")
def test_real_fashion_mnist_items():
    data = DATASETS["scenes"](subset=500)
    assert data.num_train == 500 and data.test.images.shape == (10000, 3, 32, 32)
    assert data.train.labels.max() == 9
