"""Export a trained run's features, per image, to a .npz file: a split of its dataset or a folder of images.

    python experiments/extract.py runs/mine --split test --out runs/mine/test_features.npz
    python experiments/extract.py runs/mine --images new_images/ --out new_features.npz --device cuda

Arrays (``np.load(FILE)`` reads them; no pickled objects): h [N, F] (backbone), z [N, K] (normalised projector
output), features [N, K] (what the evaluation scores), for gated methods gate [N, K] (the test-time mask) and probs
[N, K] (the guide's open probabilities, and what else the system reports, e.g. entropy); labels [N] (splits),
index [N] (position in the split or the file list) and names [N] (file names relative to the data or image folder,
where the images are files). Images from --images are read as the run's evaluation reads its own: converted to its
channels, resized and centre-cropped to its size, normalised with its statistics. Batched on --device (auto: CUDA
when available), a progress bar on a terminal. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from pyro_ncl.cli import run_script, OneLineParser, int_at_least
from pyro_ncl.features import file_features, image_files, save_features, split_features
from pyro_ncl.trained_run import load_run
from pyro_ncl.runtime import local_device


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a trained run's folder (config.json, checkpoint.pt)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", choices=("train", "val", "test"),
                      help="a split of the run's dataset (val: where the run has a validation split)")
    what.add_argument("--images", metavar="DIR", help="every image file under DIR (nested or not)")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="images per batch (default: the run's)")
    p.add_argument("--data-root", default=None, help="the run's dataset folder, if it moved since training")
    p.add_argument("--skip-bad-images", action="store_true", help="--images: leave out unreadable files, counted")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(args) -> dict:
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: expected a file name ending in .npz")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    files = image_files(args.images, args.skip_bad_images) if args.images else None
    run = load_run(args.run_dir, device=local_device(args.device), data_root=args.data_root)
    total = len(files) if files is not None else None
    with tqdm(total=total, unit="img", desc="extracting", file=sys.stderr,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        if files is not None:
            arrays = file_features(run, files, args.batch_size, root=Path(args.images),
                                   skip_bad_images=args.skip_bad_images, progress=bar.update)
        else:
            arrays = split_features(run, args.split, args.batch_size, progress=bar.update)
    save_features(arrays, out)
    shapes = ", ".join(f"{k} {list(v.shape[1:]) or ''}".strip() for k, v in arrays.items() if v.ndim)
    skipped = int(arrays.get("skipped", 0))
    print(f"wrote {out}: {len(arrays['index'])} images ({shapes})"
          + (f"; skipped {skipped} unreadable file(s)" if skipped else ""))
    return arrays


def cli(argv=None):
    """Parse, run; bad input as one line and exit status 2 (``pyro_ncl.cli.run_script``)."""
    return run_script(main, parser(), argv)
