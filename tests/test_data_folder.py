"""Your own images (``--dataset folder``) from small generated ImageFolder trees: labels, channels, sizes,
normalisation statistics, the held-out splits, unlabelled pre-training, and every bad input a real folder has
(each a one-line error naming the file, or skipped and counted with ``skip_bad_images``)."""
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_ncl.data import DATASETS, DatasetNotFound
from pyro_ncl.data.file_data import ImageReadError, load_image

CLASSES = ("ant", "bee", "cow")


def write_image(path: Path, rng, colour: int, size=(20, 24), gray: bool = False) -> None:
    """A noisy image dominated by channel ``colour``: PNG or JPEG by the suffix, grayscale or RGB."""
    base = np.zeros(size + (3,), np.uint8)
    base[..., colour % 3] = 180
    pixels = np.clip(base + rng.integers(0, 60, size + (3,)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert("L") if gray else img).save(path)


def make_tree(root: Path, per_class: int = 8, held: int = 3, splits=("train", "test"), gray: str = "mixed",
              classes=CLASSES, seed: int = 0) -> Path:
    """train/CLASS and each held-out split: PNG and JPEG alternating, sizes 16–32 px (not square), grayscale every
    third image (``gray="mixed"``), all grayscale (``"all"``) or none."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class if split == "train" else held):
                size = (int(rng.integers(16, 33)), int(rng.integers(16, 33)))
                is_gray = gray == "all" or (gray == "mixed" and i % 3 == 0)
                write_image(root / split / name / f"{name}_{i}.{'png' if i % 2 else 'jpg'}", rng, c, size, is_gray)
    return root


def load(root, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good tree loads without a warning
        return DATASETS["folder"](root=str(root), **options)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


def test_labels_channels_sizes_and_batches(tree):
    data = load(tree)
    assert (data.num_classes, data.num_train, len(data.test_samples), data.in_channels) == (3, 24, 9, 3)
    assert data.classes == list(CLASSES) and data.eval_split == "test"
    for path, label in data.train_samples + data.test_samples:
        assert Path(path).parent.name == CLASSES[label]
    x1, x2, y, index = next(data.train_batches(8, epoch=0, seed=1, device="cpu"))
    assert x1.shape == x2.shape == (8, 3, 32, 32) and not torch.equal(x1, x2)  # mixed sizes: resized
    assert all(data.train_samples[int(i)][1] == int(label) for i, label in zip(index, y))
    again = list(data.train_batches(8, epoch=0, seed=1, device="cpu", start_step=1))[0]
    assert all(torch.equal(a, b) for a, b in zip(again, list(data.train_batches(8, 0, 1, "cpu"))[1]))
    x, y = next(data.eval_batches("train", 64, "cpu"))
    # the statistics are those of the training images as the evaluation sees them: normalised to 0 and 1
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=2e-3)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=2e-3)
    options = data.resolved_options
    assert options["channels"] == 3 and len(options["image_mean"].split(",")) == 3
    assert data.device_augment.augment.blur_prob == 0  # 32 px: the small-image recipe


def test_grayscale_tree_gives_one_channel_and_channels_can_be_declared(tmp_path):
    gray = make_tree(tmp_path / "gray", per_class=4, held=2, gray="all")
    data = load(gray)
    assert data.in_channels == 1 and data.resolved_options["channels"] == 1
    assert next(data.eval_batches("test", 4, "cpu"))[0].shape == (4, 1, 32, 32)
    rgb = load(gray, channels=3, image_size=16)
    assert next(rgb.train_batches(4, 0, 0, "cpu"))[0].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="--image-mean 0.5 gives 1 value"):
        load(gray, channels=3, image_mean="0.5", image_std="0.2")


def test_given_statistics_are_used_and_the_recipe_follows_the_size(tree, monkeypatch):
    import pyro_ncl.data.folder as folder_dataset

    monkeypatch.setattr(folder_dataset, "image_statistics", lambda *a: pytest.fail("statistics recomputed"))
    data = load(tree, image_mean="0.5,0.5,0.5", image_std="0.25,0.25,0.25", channels=3)
    assert data.resolved_options == dict(channels=3, image_mean="0.5,0.5,0.5", image_std="0.25,0.25,0.25")
    x, _ = next(data.eval_batches("test", 4, "cpu"))
    raw = data.eval_image(data.test_samples[0][0]).float() / 255
    assert torch.allclose(x[0], (raw - 0.5) / 0.25, atol=1e-6)
    large = load(tree, image_size=128, image_mean="0.5,0.5,0.5", image_std="0.25,0.25,0.25")
    assert large.device_augment.augment.blur_prob == 0.5 and next(large.eval_batches("test", 2, "cpu"))[0].shape \
        == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="--image-mean and --image-std go together"):
        load(tree, image_mean="0.5,0.5,0.5")


def test_held_out_splits_val_test_or_both(tmp_path):
    only_val = make_tree(tmp_path / "v", per_class=3, held=2, splits=("train", "val"))
    data = load(only_val)
    assert data.eval_split == "test" and Path(data.test_samples[0][0]).parts[-3] == "val"
    both = make_tree(tmp_path / "b", per_class=3, held=2, splits=("train", "val", "test"))
    data = load(both)
    assert data.eval_split == "val" and len(data.val_samples) == len(data.test_samples) == 6
    assert sum(len(y) for _, y in data.eval_batches("val", 4, "cpu")) == 6
    (tmp_path / "none" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFound, match="neither val/ nor test/ in"):
        load(tmp_path / "none")
    with pytest.raises(DatasetNotFound, match="no train/ folder in"):
        load(tmp_path / "v" / "val")
    with pytest.raises(ValueError, match="--val-size: the folder dataset does not carve"):
        load(only_val, val_size=2)


def test_unlabelled_pretraining_draws_from_a_nested_folder(tmp_path, tree):
    rng = np.random.default_rng(5)
    pool = tmp_path / "pool"
    for i in range(10):
        write_image(pool / ("deep/er" if i % 2 else "") / f"u{i}.png", rng, i, (28, 20), gray=i % 4 == 0)
    (pool / "deep" / "back").symlink_to(pool, target_is_directory=True)  # a loop: refused, or skipped
    with pytest.raises(ValueError, match=r"pool/deep/back leads back to a folder above it \(a symlink loop\)"):
        load(tree, unlabelled_root=str(pool))
    with pytest.warns(UserWarning, match="skipped 1 symlink loop"):
        data = DATASETS["folder"](root=str(tree), unlabelled_root=str(pool), skip_bad_images=True)
    assert data.num_train == 10 and data.num_eval_train == 24
    x1, _, y, index = next(data.train_batches(5, 0, 0, "cpu"))
    assert y.tolist() == [-1] * 5 and x1.shape == (5, 3, 32, 32)
    assert sum(len(y) for _, y in data.eval_batches("train", 64, "cpu")) == 24  # the labelled tree
    assert data.resolved_options["image_mean"] != load(tree).resolved_options["image_mean"]  # from the pool


# ---------------------------------------------------------------- what a real folder holds
@pytest.fixture
def spoiled(tmp_path, tree):
    def spoil(how):
        root = tmp_path / "spoiled"
        shutil.copytree(tree, root, symlinks=True)
        return root, how(root)
    return spoil


def _truncate(root):
    bad = root / "train" / "bee" / "bee_2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    return bad


def _not_an_image(root):
    bad = root / "train" / "ant" / "notes.png"
    bad.write_text("an image name, but text inside")
    return bad


def _eps(root):
    """A PostScript file named .png: Pillow would open it as EPS (and hand it to Ghostscript to decode)."""
    bad = root / "train" / "cow" / "vector.png"
    bad.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n%%EOF\n")
    assert Image.open(bad).format == "EPS"  # the check can fail: unrestricted, Pillow takes it
    return bad


def _empty_class(root):
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "README.txt").write_text("no images yet")
    return root / "train" / "dog"


def _unknown_class(root):
    shutil.copytree(root / "test" / "cow", root / "test" / "yak")
    return root / "test" / "yak"


def _file_loop(root):
    a, b = root / "train" / "ant" / "loop_a.png", root / "train" / "ant" / "loop_b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def _folder_loop(root):
    link = root / "train" / "bee" / "again"
    link.symlink_to(root / "train", target_is_directory=True)
    return link


def _fifo(root):
    bad = root / "train" / "cow" / "pipe.png"
    os.mkfifo(bad)
    return bad


BAD = {  # how, the one-line error (a regular expression), what --skip-bad-images counts
    "truncated image": (_truncate, "cannot read image {bad}: (image file is truncated|Truncated File Read)", {"unreadable image": 1}),
    "not an image, image name": (_not_an_image, "cannot read image {bad}: cannot identify image file",
                                 {"unreadable image": 1}),
    "PostScript named .png": (_eps, "cannot read image {bad}: cannot identify image file", {"unreadable image": 1}),
    "empty class folder": (_empty_class, "folder: class folder {bad} holds no images \\(or pass --skip-bad-images",
                           {"empty class folder": 1}),
    "test class train lacks": (_unknown_class, "folder: class 'yak' of .*/test has no folder in .*/train \\(its 3 "
                               "classes: ant, bee, cow\\)", {"image of a class train/ lacks": 3}),
    "symlink loop (files)": (_file_loop, "folder: {bad} is a symlink loop \\(Too many levels of symbolic links\\)",
                             {"symlink loop": 2}),
    "symlink loop (folder)": (_folder_loop, "folder: {bad} leads back to a folder above it \\(a symlink loop\\)",
                              {"symlink loop": 1}),
    "FIFO named .png": (_fifo, "folder: {bad} is not a regular file \\(a named pipe\\)", {"unreadable image": 1}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_folder_is_one_line_naming_the_file_or_skipped_and_counted(spoiled, case):
    how, expected, counts = BAD[case]
    root, bad = spoiled(how)
    with pytest.raises((ValueError, ImageReadError)) as err:
        load(root)
    message = str(err.value)
    assert "\n" not in message and re.search(expected.format(bad=bad), message), message
    with pytest.warns(UserWarning, match="skipped"):
        data = DATASETS["folder"](root=str(root), skip_bad_images=True)
    assert data.skipped == counts
    assert data.num_skipped == sum(n for kind, n in counts.items() if kind != "empty class folder")
    assert data.num_classes == 3 and str(bad) not in {p for p, _ in data.train_samples + data.test_samples}
    for _ in data.train_batches(8, 0, 0, "cpu"):  # what is left trains
        pass


def test_non_image_files_are_ignored_and_loose_images_refused(tmp_path, tree):
    root = tmp_path / "notes"
    shutil.copytree(tree, root)
    for extra in ("train/ant/README.txt", "train/labels.csv", "train/.DS_Store", "test/bee/._bee_0.jpg"):
        (root / extra).write_text("not an image")
    data = load(root)
    assert data.num_ignored == 4 and data.num_train == 24 and len(data.test_samples) == 9
    flat = tmp_path / "flat"
    write_image(flat / "train" / "a.png", np.random.default_rng(0), 0)
    (flat / "test").mkdir()
    with pytest.raises(ValueError, match=r"train holds 1 image\(s\) but no class folders"):
        load(flat)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    got = np.asarray(load_image(str(path), "L"))
    assert got.tolist() == np.rint(values / 257).astype(np.uint8).tolist() and got.max() == 255 and got[0, 1] == 17
