"""Your own images (``folder``): an ImageFolder tree read with ``FolderData``, optionally pre-trained on a folder of
unlabelled images.

    root/train/CLASS/*.png|jpg|…     labels: the class folders of train/, sorted by name (nested folders inside a
    root/test/CLASS/…                class folder belong to it); the held-out split: test/, or val/ when there is
    root/val/CLASS/…                 no test/ (as ImageNet's); with both, val/ is the validation split the end of a
                                     run scores and test/ stays unread (``evaluate.py``/``extract.py --split test``)

``unlabelled_root``: training draws from every image under that folder (nested or not, label -1) instead of
train/; train/ and the held-out split are what the evaluation fits and scores, as STL-10's unlabeled split is used.

Images of any mode and size: converted to ``channels`` (1: grayscale, 3: RGB; auto: 1 when the sampled training
images are all grayscale), cropped and resized to ``image_size`` (32 by default) by the small-image recipe (SimCLR's
CIFAR one) up to 96 px, the ImageNet one (with blur) above. The workers crop and flip (uint8 views); colour jitter,
grayscale, blur and normalisation run in batches on the training device. Normalisation statistics: computed from up
to ``STATS_IMAGES`` training images as the evaluation sees them (``image_mean``/``image_std`` when given), and
returned in ``resolved_options`` with the channel count, so that the run records them in config.json and a resumed
or reloaded run normalises exactly as it trained.

What a real folder holds, and what it gives (``skip_bad_images``: left out and counted in ``skipped``, one warning
line, instead of a one-line error naming the file):
    a file without an image extension (README.txt, labels.csv), a hidden file or folder (.DS_Store, ._x.jpg): ignored
        (counted in ``num_ignored``);
    an unreadable or truncated image, a non-image with an image extension: ``ImageReadError`` when first read (or
        while the statistics are computed); skipped after a full decode at start with ``skip_bad_images``;
    an image name that is not a regular file (a FIFO, a device, a broken link): refused by name (a FIFO would hang);
    an empty class folder; a class in val/ or test/ that train/ lacks; a symlink loop: refused by name;
    images of different sizes and modes: resized and converted.
"""
from __future__ import annotations

import errno
import math
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.v2 as T
from PIL import Image

from pyro_ncl.data.augment import BatchAugment, Normalise
from pyro_ncl.data.base import DATASETS, DatasetNotFound, reject_options
from pyro_ncl.data.cifar import cifar_augment
from pyro_ncl.data.file_data import IMG_EXTENSIONS, SAFE_FORMATS, FolderData, ImageReadError, Samples, load_image
from pyro_ncl.data.file_data import spread_subset
from pyro_ncl.data.imagenet100 import BLUR_PROB, CROP_SCALE, GRAYSCALE_PROB, JITTER, JITTER_PROB, blur_settings

NAME = "folder"
DEFAULT_SIZE = 32
SMALL_UP_TO = 96  # sizes up to this use the small-image recipe (CIFAR, STL-10), larger ones the ImageNet recipe
STATS_IMAGES = 1000  # training images the normalisation statistics are computed from (a fixed spread)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
PLURALS = {"unreadable image": "unreadable images", "empty class folder": "empty class folders",
           "image of a class train/ lacks": "images of classes train/ lacks", "symlink loop": "symlink loops"}
LAYOUT = "expected DIR/train/CLASS/*.png|jpg|… and DIR/test/CLASS/… (or DIR/val/CLASS/…)"


# ---------------------------------------------------------------- what a folder holds
@dataclass
class Problems:
    """The bad entries met while listing a tree: the first one is a one-line ValueError, unless ``skip`` (then
    each is counted by kind in ``counts``; ``first`` keeps the first message)."""
    skip: bool
    counts: Dict[str, int] = field(default_factory=dict)
    first: Optional[str] = None
    ignored: int = 0

    def add(self, kind: str, message: str, count: int = 1) -> None:
        if not self.skip:
            raise ValueError(f"{NAME}: {message} (or pass --skip-bad-images to leave it out)")
        self.counts[kind] = self.counts.get(kind, 0) + count
        self.first = self.first or message

    def warn(self) -> None:
        if self.counts:
            what = ", ".join(f"{n} {kind if n == 1 else PLURALS[kind]}" for kind, n in self.counts.items())
            warnings.warn(f"{NAME}: skipped {what} (first: {self.first})", stacklevel=3)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def folder_key(path: Path) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _entries(folder: Path, problems: Problems, unreadable_images: bool) -> Iterator[Tuple[Path, os.stat_result]]:
    """(path, stat) of each entry of ``folder`` by name, links followed; hidden files are ignored (counted), a
    symlink loop is a problem, another entry that cannot be stat'ed is an unreadable image when it is named like
    one and ``unreadable_images``, else ignored."""
    with os.scandir(folder) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        path = Path(entry.path)
        if _is_hidden(entry.name):
            problems.ignored += 1
            continue
        try:
            info = os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                problems.add("symlink loop", f"{path} is a symlink loop ({err.strerror})")
            elif unreadable_images and path.suffix.lower() in IMG_EXTENSIONS:
                problems.add("unreadable image", f"cannot read image {path}: {err.strerror}")
            else:
                problems.ignored += 1
            continue
        yield path, info


def walk_images(folder: Path, problems: Problems, above: FrozenSet[Tuple[int, int]] = frozenset(),
                seen: Optional[set] = None) -> List[Path]:
    """Every image file under ``folder`` (nested folders included; symlinked folders followed), sorted by path.
    A folder that leads back to one above it (``above``: their (device, inode)) is a symlink loop; one reached
    twice by other links is listed once (``seen``)."""
    seen = set() if seen is None else seen
    here = above | {folder_key(folder)}
    found: List[Path] = []
    for path, info in _entries(folder, problems, unreadable_images=True):
        is_image = path.suffix.lower() in IMG_EXTENSIONS
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in here:
                problems.add("symlink loop", f"{path} leads back to a folder above it (a symlink loop)")
            elif key not in seen:
                seen.add(key)
                found.extend(walk_images(path, problems, here, seen))
        elif not is_image:
            problems.ignored += 1
        elif not stat.S_ISREG(info.st_mode):
            problems.add("unreadable image", f"{path} is not a regular file ({_file_kind(info.st_mode)})")
        else:
            found.append(path)
    return found


def class_folders(split: Path, problems: Problems) -> Dict[str, List[Path]]:
    """{class name: its images} of a split folder (sorted by name); an empty class folder is a problem, files
    directly in the split folder are ignored (refused when they are images and there are no class folders)."""
    above = frozenset({folder_key(split.parent), folder_key(split)})
    classes: Dict[str, List[Path]] = {}
    loose = 0
    for path, info in _entries(split, problems, unreadable_images=False):
        if not stat.S_ISDIR(info.st_mode):
            loose += path.suffix.lower() in IMG_EXTENSIONS
            problems.ignored += 1
        elif (info.st_dev, info.st_ino) in above:
            problems.add("symlink loop", f"{path} leads back to a folder above it (a symlink loop)")
        else:
            images = walk_images(path, problems, above)
            if images:
                classes[path.name] = images
            else:
                problems.add("empty class folder", f"class folder {path} holds no images")
    if not classes and loose:
        raise ValueError(f"{NAME}: {split} holds {loose} image(s) but no class folders: put each class's images in "
                         f"{split}/CLASS/ (images without labels: --unlabelled-root)")
    return classes


def labelled_samples(split: Path, classes: List[str], problems: Problems) -> Samples:
    """(path, label) of a held-out split, labels by ``classes`` (train/'s); a class train/ lacks is a problem."""
    found = class_folders(split, problems)
    samples: Samples = []
    for name, images in found.items():
        if name not in classes:
            shown = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
            problems.add("image of a class train/ lacks", f"class {name!r} of {split} has no folder in "
                         f"{split.parent / 'train'} (its {len(classes)} classes: {shown})", count=len(images))
            continue
        samples.extend((str(p), classes.index(name)) for p in images)
    return samples


def find_tree(root: Path, problems: Problems) -> Tuple[List[str], Samples, Optional[Samples], Samples]:
    """(class names, train, val or None, test) of an ImageFolder tree."""
    if not root.is_dir():
        raise DatasetNotFound(f"{NAME}: --data-root {root} is not a folder; {LAYOUT}")
    if not (root / "train").is_dir():
        raise DatasetNotFound(f"{NAME}: no train/ folder in {root}; {LAYOUT}")
    held = [split for split in ("val", "test") if (root / split).is_dir()]
    if not held:
        raise DatasetNotFound(f"{NAME}: neither val/ nor test/ in {root}; {LAYOUT}")
    found = class_folders(root / "train", problems)
    if not found:
        raise ValueError(f"{NAME}: {root / 'train'} holds no class folders with images; {LAYOUT}")
    classes = sorted(found)
    train = [(str(p), label) for label, name in enumerate(classes) for p in found[name]]
    splits = {split: labelled_samples(root / split, classes, problems) for split in held}
    for split, samples in splits.items():
        if not samples:
            raise ValueError(f"{NAME}: {root / split} holds no images of the classes of train/")
    test = splits.get("test", splits.get("val"))
    return classes, train, splits["val"] if len(splits) == 2 else None, test


def find_unlabelled(root: Path, problems: Problems) -> Samples:
    """(path, -1) of every image under ``root``."""
    if not root.is_dir():
        raise DatasetNotFound(f"{NAME}: --unlabelled-root {root} is not a folder")
    images = walk_images(root, problems)
    if len(images) < 2:
        raise ValueError(f"{NAME}: --unlabelled-root {root} holds {len(images)} image(s); at least 2 are needed")
    return [(str(p), -1) for p in images]


# ---------------------------------------------------------------- channels, statistics, recipe
def guess_channels(paths: Sequence[str]) -> int:
    """1 when every readable image in ``paths`` is grayscale (read from the headers), else 3 (unreadable ones are
    reported when they are decoded)."""
    def gray(path: str) -> bool:
        try:
            with Image.open(path, formats=SAFE_FORMATS) as img:
                return img.mode in GRAY_MODES or img.mode.startswith("I;16")
        except Exception:
            return True
    with ThreadPoolExecutor(_threads()) as pool:
        return 1 if all(pool.map(gray, paths)) else 3


def image_statistics(paths: Sequence[str], transform, mode: str) -> Tuple[List[float], List[float]]:
    """Per-channel mean and standard deviation in [0, 1] of the images in ``paths`` as ``transform`` (PIL → uint8
    [C, S, S]) gives them, over every pixel."""
    def moments(path: str) -> torch.Tensor:
        x = transform(load_image(path, mode)).double().div_(255).flatten(1)  # [C, S·S]
        return torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])])
    with ThreadPoolExecutor(_threads()) as pool:
        total = sum(pool.map(moments, paths))
    mean = total[0] / total[2]
    std = (total[1] / total[2] - mean ** 2).clamp(min=0).sqrt()
    return mean.tolist(), std.tolist()


def _threads() -> int:
    return min(8, (os.cpu_count() or 1) * 2)


def format_numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:.4f}" for v in values)


def parse_numbers(text: str, flag: str, channels: int, positive: bool = False) -> List[float]:
    """``"0.5,0.4,0.3"`` → floats: one per channel, finite (and > 0 when ``positive``), else a one-line ValueError."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if len(values) != channels:
        raise ValueError(f"{flag} {text} gives {len(values)} value(s) for {channels} channel(s)")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{flag} {text}: every value must be a finite number{' > 0' if positive else ''}")
    return values


def photometric(image_size: int) -> BatchAugment:
    """The colour work of the recipe for ``image_size``: SimCLR's small-image one (jitter 0.4, grayscale 0.2) up to
    ``SMALL_UP_TO`` px, the ImageNet one (jitter 0.8, grayscale 0.2, blur scaled to the size) above."""
    if image_size <= SMALL_UP_TO:
        return cifar_augment(image_size)
    kernel, sigma = blur_settings(image_size)
    return BatchAugment(image_size, brightness=JITTER, contrast=JITTER, saturation=JITTER, jitter_prob=JITTER_PROB,
                        grayscale_prob=GRAYSCALE_PROB, blur_prob=BLUR_PROB, blur_sigma=sigma, blur_kernel=kernel)


def eval_transform(image_size: int) -> T.Compose:
    """PIL → uint8 [C, S, S]: the shorter side resized to S (S·256/224 with the ImageNet recipe), centre crop S."""
    resize = image_size if image_size <= SMALL_UP_TO else int(round(image_size * 256 / 224))
    return T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(image_size), T.ToImage()])


def crop_transform(image_size: int) -> T.Compose:
    """PIL → one uint8 view [C, S, S]: random resized crop (area 8–100%) and horizontal flip, in the workers."""
    return T.Compose([T.RandomResizedCrop(image_size, scale=CROP_SCALE, antialias=True), T.RandomHorizontalFlip(),
                      T.ToImage()])


class _DeviceViews:
    """``FolderData.device_augment``: uint8 crops [b, C, S, S] on the device → the recipe's colour work, normalised
    (a class, not a closure, so that the dataset stays picklable for loader workers)."""

    def __init__(self, augment: BatchAugment, normalise: Normalise):
        self.augment, self.normalise = augment, normalise

    def __call__(self, x: torch.Tensor, generator: torch.Generator, rows=None, batch_size=None) -> torch.Tensor:
        return self.normalise(self.augment.photometric(x.float().div_(255), generator, rows, batch_size))


# ---------------------------------------------------------------- the dataset
@DATASETS.register(NAME)
def image_folder(root=None, subset=None, image_size: int = DEFAULT_SIZE, num_workers: Optional[int] = None,
                 skip_bad_images: bool = False, unlabelled_root: Optional[str] = None,
                 channels: Optional[int] = None, image_mean: Optional[str] = None, image_std: Optional[str] = None,
                 **options) -> FolderData:
    """An ImageFolder tree at ``root`` (see the module docstring); ``resolved_options`` of the result: the channel
    count and the normalisation statistics it used."""
    if "val_size" in options:
        raise ValueError(f"--val-size: the {NAME} dataset does not carve a validation split; give it one as "
                         f"DIR/val/ beside DIR/test/")
    reject_options(NAME, options)
    if root is None:
        raise DatasetNotFound(f"{NAME}: pass --data-root DIR, the folder of your images; {LAYOUT}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 pixels, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"--channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    problems = Problems(skip=bool(skip_bad_images))
    classes, train, val, test = find_tree(Path(root), problems)
    pool = find_unlabelled(Path(unlabelled_root), problems) if unlabelled_root else None
    problems.warn()
    if (image_mean is None) != (image_std is None):
        raise ValueError("--image-mean and --image-std go together: give both or neither")
    channels = channels or guess_channels([p for p, _ in spread_subset(pool or train, STATS_IMAGES)])
    evaluate = eval_transform(image_size)
    data = FolderData(NAME, train, test, len(classes), crop_transform(image_size), evaluate, image_size,
                      subset=subset, num_workers=num_workers, skip_bad_images=skip_bad_images, in_channels=channels,
                      val_samples=val, pool_samples=pool)
    if image_mean is None:  # from the training images in use (after --subset and --skip-bad-images)
        sample = [p for p, _ in spread_subset(data.pool_samples, STATS_IMAGES)]
        mean, std = image_statistics(sample, evaluate, data.mode)
        image_mean, image_std = format_numbers(mean), format_numbers([max(s, 1e-4) for s in std])
    normalise = Normalise(parse_numbers(image_mean, "--image-mean", channels),
                          parse_numbers(image_std, "--image-std", channels, positive=True))
    data.device_augment, data.device_normalize = _DeviceViews(photometric(image_size), normalise), normalise
    data.classes, data.root = classes, Path(root)
    data.skipped = dict(problems.counts)
    if data.num_skipped:
        data.skipped["unreadable image"] = data.skipped.get("unreadable image", 0) + data.num_skipped
    data.num_skipped += sum(n for kind, n in problems.counts.items() if kind != "empty class folder")
    data.num_ignored = problems.ignored
    data.resolved_options = dict(channels=channels, image_mean=image_mean, image_std=image_std)
    return data
