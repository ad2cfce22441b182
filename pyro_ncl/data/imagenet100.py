"""ImageNet-100 (``imagenet100``): the CMC list of 100 ImageNet-1k classes, read from files with ``FolderData``.

``root`` holds ``train/`` and ``val/`` in ImageFolder layout (``train/<wnid>/*.JPEG``): either a prepared folder of
the 100 classes or a full ImageNet-1k root, filtered to the listed classes without copying. Label = position of the
wnid in ``imagenet100_classes.txt`` (shipped with the package), so train and val labels agree.

Options: ``image_size`` (224; train crop size, eval resize = size·256/224), ``num_workers`` (None: auto, a share
of the cores on CUDA, 0 on the CPU), ``skip_bad_images`` (False), ``gpu_augment`` (False). The authors'
augmentations are scaled with ``image_size`` (blur kernel and sigma). Images leave the workers as uint8.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
import torchvision.transforms.v2 as T

from pyro_ncl.data.augment import BatchAugment, Normalise
from pyro_ncl.data.base import DATASETS, DatasetNotFound, reject_options
from pyro_ncl.data.file_data import FolderData, Samples, image_files

NAME = "imagenet100"
DEFAULT_ROOT = "data/imagenet100"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HOW_TO_GET = ("pass --data-root pointing at an ImageNet-100 folder or a full ImageNet-1k root, "
              "each with train/ and val/ holding one folder per wnid (train/<wnid>/*.JPEG)")
# the authors' 224 px recipe: crop scale, colour jitter strength and probabilities (jitter, grayscale, blur)
CROP_SCALE, JITTER, JITTER_PROB, GRAYSCALE_PROB, BLUR_PROB = (0.08, 1.0), 0.8, 0.8, 0.2, 0.5


def imagenet100_classes() -> List[str]:
    """The 100 wnids in label order."""
    text = resources.files("pyro_ncl.data").joinpath("imagenet100_classes.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def find_split(root: Path, split: str, wnids: List[str]) -> Samples:
    """(path, label) of every image of the listed classes in ``root/split``; other class folders are ignored."""
    folder = root / split
    if not folder.is_dir():
        raise DatasetNotFound(f"{NAME}: no {split} folder at {folder}; {HOW_TO_GET}")
    missing = [w for w in wnids if not (folder / w).is_dir()]
    if missing:
        unsorted = not any(p.is_dir() for p in folder.iterdir()) and image_files(folder)
        flat = " (its images are not in class folders: sort them by wnid, e.g. with valprep.sh)" if unsorted else ""
        raise DatasetNotFound(f"{NAME}: class {missing[0]} missing from {folder} "
                              f"({len(missing)} of {len(wnids)} classes missing){flat}; {HOW_TO_GET}")
    samples: Samples = []
    for label, wnid in enumerate(wnids):
        files = image_files(folder / wnid)
        if not files:
            raise DatasetNotFound(f"{NAME}: class folder {folder / wnid} holds no images; {HOW_TO_GET}")
        samples.extend((str(p), label) for p in files)
    return samples


def blur_settings(image_size: int) -> Tuple[int, Tuple[float, float]]:
    """(kernel size, sigma range) of the recipe's Gaussian blur, 23 px and 0.1–2 at 224 px, scaled to S."""
    scale = image_size / 224
    return max(3, int(round(23 * scale)) // 2 * 2 + 1), (0.1 * scale, 2.0 * scale)


def _crop_flip(image_size: int) -> list:
    return [T.RandomResizedCrop(image_size, scale=CROP_SCALE, antialias=True), T.RandomHorizontalFlip()]


def imagenet_train_transform(image_size: int = 224) -> T.Compose:
    """PIL → one augmented view, uint8 [3, S, S]: the authors' recipe at 224 px, scaled to S (normalised on the
    training device by ``normalise``)."""
    kernel, sigma = blur_settings(image_size)
    return T.Compose([
        *_crop_flip(image_size),
        T.RandomApply([T.ColorJitter(JITTER, JITTER, JITTER, 0.2)], p=JITTER_PROB),
        T.RandomGrayscale(p=GRAYSCALE_PROB),
        T.RandomApply([T.GaussianBlur(kernel, sigma=sigma)], p=BLUR_PROB),
        T.ToImage()])


def imagenet_eval_transform(image_size: int = 224) -> T.Compose:
    """PIL → uint8 [3, S, S]: resize to S·256/224, centre crop S (normalised on the device by ``normalise``)."""
    return T.Compose([T.Resize(int(round(image_size * 256 / 224)), antialias=True), T.CenterCrop(image_size),
                      T.ToImage()])


normalise = Normalise(MEAN, STD)  # uint8 [b, 3, S, S] → ImageNet-normalised float, on the batch's device


def _normalise_views(x: torch.Tensor, generator=None, rows=None, batch_size=None) -> torch.Tensor:
    """``FolderData.device_augment`` for views augmented in full by the workers: normalisation only."""
    return normalise(x)


def imagenet_device_augment(image_size: int = 224) -> Tuple[T.Compose, Callable]:
    """The same recipe split for batched augmentation on the training device: (per-image crop + flip in the
    workers → uint8 [3, S, S], batched colour jitter, grayscale, blur and normalisation on the device). The batched
    colour jitter has no hue term (brightness, contrast, saturation 0.8 only)."""
    kernel, sigma = blur_settings(image_size)
    crop = T.Compose([*_crop_flip(image_size), T.ToImage()])
    photometric = BatchAugment(image_size, brightness=JITTER, contrast=JITTER, saturation=JITTER,
                               jitter_prob=JITTER_PROB, grayscale_prob=GRAYSCALE_PROB, blur_prob=BLUR_PROB,
                               blur_sigma=sigma, blur_kernel=kernel)

    def augment(x: torch.Tensor, generator: torch.Generator, rows: Optional[slice] = None,
                batch_size: Optional[int] = None) -> torch.Tensor:
        """uint8 [b, 3, S, S] on the device → normalised float views [b, 3, S, S] (``rows`` of a batch of
        ``batch_size``: see ``BatchAugment.photometric``)."""
        return normalise(photometric.photometric(x.float().div_(255), generator, rows, batch_size))
    return crop, augment


@DATASETS.register(NAME)
def imagenet100(root=None, subset=None, image_size: int = 224, num_workers: Optional[int] = None,
                skip_bad_images: bool = False, gpu_augment: bool = False, **options) -> FolderData:
    """Views leave the workers as uint8 and are normalised on the training device. ``gpu_augment``: the workers
    only crop and flip, colour/blur run in batches on the device (see ``imagenet_device_augment``); otherwise the
    workers apply the whole recipe. ``num_workers`` None: "auto" (see ``FolderData``)."""
    reject_options(NAME, options)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 pixels, got {image_size!r}")
    folder = Path(root or DEFAULT_ROOT)
    if not folder.is_dir():
        raise DatasetNotFound(f"{NAME} not found: {folder} is not a folder; {HOW_TO_GET}")
    wnids = imagenet100_classes()
    train, test = find_split(folder, "train", wnids), find_split(folder, "val", wnids)
    if gpu_augment:
        train_t, device_augment = imagenet_device_augment(image_size)
    else:
        train_t, device_augment = imagenet_train_transform(image_size), _normalise_views
    eval_t = imagenet_eval_transform(image_size)
    return FolderData(NAME, train, test, len(wnids), train_t, eval_t, image_size, subset=subset,
                      num_workers=num_workers, skip_bad_images=skip_bad_images, device_augment=device_augment,
                      device_normalize=normalise)
