"""Features out of a trained run, per image, for a split of its dataset or for any image files; saved as ``.npz``.

    run = load_run("runs/mine", device="cuda")
    out = split_features(run, "test")                  # {h, z, features, gate, probs, ..., labels, index, names}
    out = file_features(run, image_files("new_images"))  # the same for files (names: their paths)
    save_features(out, "features.npz")                 # np.load(..., allow_pickle=False) reads it back

``features`` is what the evaluation scores (the gated normalised z with the test-time gate for gated methods, the
normalised z otherwise); split features are ``pyro_ncl.evaluation.extract``'s, the very function the evaluation
uses; file features are computed from the files as the evaluation reads its own images (``Run.read_images``).
Arrays: float32 [N, ·] per feature; ``labels`` int64 [N] (splits); ``index`` int64 [N] (position in the split or
in the file list); ``names`` str [N] (file names, relative to the data or image folder, where there are files).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from pyro_ncl.data.file_data import ImageReadError
from pyro_ncl.data.folder import Problems, walk_images
from pyro_ncl.evaluation import extract
from pyro_ncl.trained_run import Run

Progress = Optional[Callable[[int], None]]  # called with the number of images just done


def split_features(run: Run, split: str = "test", batch_size: Optional[int] = None,
                   progress: Progress = None) -> Dict[str, np.ndarray]:
    """Every image of a split of the run's dataset ("train", "test", or "val" where the run has one): the system's
    features (``evaluation.extract``), ``labels``, ``index`` and, for file datasets, ``names`` relative to the data
    folder."""
    out = extract(run.system, run.data, split, batch_size or run.config.eval_batch_size, run.device,
                  progress=progress)
    arrays = _numpy({k: v for k, v in out.items() if k != "y"})
    arrays["labels"] = out["y"].numpy().astype(np.int64)
    arrays["index"] = np.arange(len(arrays["labels"]), dtype=np.int64)
    if hasattr(run.data, "split_samples"):
        root = getattr(run.data, "root", None)
        arrays["names"] = np.array([_relative(path, root) for path, _ in run.data.split_samples(split)], dtype=str)
    return arrays


def image_files(folder, skip_bad_images: bool = False) -> List[Path]:
    """The image files under ``folder`` (nested or not; by extension, hidden ones left out), sorted by path; a file
    with an image name that is not a regular file or a symlink loop is a one-line ValueError, or left out with
    ``skip_bad_images``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images {folder} is not a folder")
    files = walk_images(folder, Problems(skip=skip_bad_images))
    if not files:
        raise ValueError(f"--images {folder} holds no image files")
    return files


def file_features(run: Run, paths: Sequence, batch_size: Optional[int] = None, root=None,
                  skip_bad_images: bool = False, progress: Progress = None) -> Dict[str, np.ndarray]:
    """The features of image files (``Run.read_images``, then ``Run.encode``), batch by batch, with ``index`` and
    ``names`` (relative to ``root`` when given). An unreadable file: ``ImageReadError`` naming it, or left out with
    ``skip_bad_images`` (``skipped``: how many)."""
    batch_size = batch_size or run.config.eval_batch_size
    parts: Dict[str, list] = {}
    kept: List[int] = []
    paths = [str(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        chunk = list(range(start, min(start + batch_size, len(paths))))
        images = []
        for i in chunk:
            try:
                images.append(run.data.eval_image(paths[i]))
                kept.append(i)
            except ImageReadError:
                if not skip_bad_images:
                    raise
        if images:
            for key, value in run.encode(run.data.eval_normalise(torch.stack(images)), batch_size).items():
                parts.setdefault(key, []).append(value)
        if progress is not None:
            progress(len(chunk))
    if not kept:
        raise ValueError("none of the image files could be read")
    arrays = _numpy({key: torch.cat(values) for key, values in parts.items()})
    arrays["index"] = np.array(kept, dtype=np.int64)
    arrays["names"] = np.array([_relative(paths[i], root) for i in kept], dtype=str)
    arrays["skipped"] = np.array(len(paths) - len(kept), dtype=np.int64)
    return arrays


def save_features(arrays: Dict[str, np.ndarray], path) -> Path:
    """Write ``arrays`` to ``path`` (.npz, compressed; no pickled objects: it loads with ``allow_pickle=False``),
    atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--out {path}: expected a file name ending in .npz")
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; expected a .npz file name")
    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _numpy(tensors: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return {key: value.detach().float().numpy() if value.is_floating_point() else value.numpy()
            for key, value in tensors.items()}


def _relative(path: str, root) -> str:
    if root is None:
        return str(path)
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
