"""Is training data-bound? Loader throughput (images/s, two augmented views each) against the training step's
throughput (forward + backward + SGD step of a small encoder on the same batch), measured in one run.

    python experiments/bench_data.py                     # ≈1 min on 2 CPU cores
    python experiments/bench_data.py --workers 0 2 4 --batch-size 256

Datasets: Fashion-MNIST in memory (views made by BatchAugment on the device; no worker processes) and a fake
ImageNet-100 ImageFolder tree of random JPEGs built in a temporary folder (decoded and augmented per image by a
DataLoader with --workers worker processes). Loader and step are timed separately: on a machine with few cores a
real run shares the cores between them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pyro_ncl.data import DATASETS, DatasetNotFound
from pyro_ncl.data.imagenet100 import imagenet100_classes
from pyro_ncl.encoders import build_encoder


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (2× views)")
    p.add_argument("--steps", type=int, default=6, help="timed batches per measurement (after one warm-up batch)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers for the folder set")
    p.add_argument("--image-size", type=int, default=32, help="crop size of the folder set's views")
    p.add_argument("--fake-pixels", type=int, default=128, help="side of the fake JPEGs")
    p.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX folder (default: its usual place)")
    p.add_argument("--width", type=int, default=16, help="small_resnet base width")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    return p.parse_args(argv)


def fake_imagenet(root: Path, per_class: int, pixels: int) -> Path:
    """train/<wnid>/*.JPEG (per_class each) and val/<wnid>/*.JPEG (1 each) for the 100 listed classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 1)):
        for wnid in imagenet100_classes():
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                base = rng.integers(0, 256, (pixels // 8, pixels // 8, 3), dtype=np.uint8)  # smooth-ish content
                img = Image.fromarray(base).resize((pixels, pixels * 3 // 4), Image.BILINEAR)
                img.save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=85)
    return root


def time_loader(batches: Iterator, batch_size: int, steps: int):
    """(images/s over `steps` batches after the first, seconds to the first batch, the first batch)."""
    start = time.perf_counter()
    first = next(batches)
    warm = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return batch_size * steps / (time.perf_counter() - warm), warm - start, first


def time_step(batch, in_channels: int, width: int, steps: int) -> float:
    """Images/s of forward + backward + SGD step (NT-Xent on both views) of small_resnet on `batch`."""
    x1, x2 = batch[0], batch[1]
    torch.manual_seed(0)
    encoder = build_encoder("small_resnet", in_channels, width, True, 512, 128, "relu")
    opt = torch.optim.SGD(encoder.parameters(), lr=0.05, momentum=0.9)
    views, b = torch.cat([x1, x2]), x1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])

    def step():
        _, z = encoder(views)
        z = F.normalize(z, dim=1)
        logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return b * steps / (time.perf_counter() - start)


def report(rows: List[dict]) -> None:
    print(f"{'dataset':<22}{'workers':>8}{'first batch s':>15}{'loader img/s':>14}{'step img/s':>12}"
          f"{'loader/step':>13}  bound by")
    for r in rows:
        ratio = r["loader"] / r["step"]
        print(f"{r['dataset']:<22}{r['workers']:>8}{r['first']:>15.2f}{r['loader']:>14.0f}{r['step']:>12.0f}"
              f"{ratio:>13.2f}  {'data' if ratio < 1 else 'compute'}")


def main(args: argparse.Namespace) -> List[dict]:
    torch.set_num_threads(args.threads)
    rows, need = [], args.batch_size * (args.steps + 1)
    try:
        fm = DATASETS["fashion-mnist"](root=args.fashion_root, subset=max(need, 2))
        rate, first_s, batch = time_loader(fm.train_batches(args.batch_size, 0, 0, "cpu"), args.batch_size, args.steps)
        step = time_step(batch, 1, args.width, args.steps)
        rows.append(dict(dataset="fashion-mnist (memory)", workers="-", first=first_s, loader=rate, step=step))
    except DatasetNotFound as err:
        print(f"skipping fashion-mnist: {err}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = fake_imagenet(Path(tmp), per_class=-(-need // 100), pixels=args.fake_pixels)
        print(f"built a fake ImageNet-100 tree of {need} train JPEGs ({args.fake_pixels}px) in "
              f"{time.perf_counter() - start:.1f}s; views at {args.image_size}px")
        step = None
        for workers in args.workers:
            data = DATASETS["imagenet100"](root=str(root), image_size=args.image_size, num_workers=workers)
            rate, first_s, batch = time_loader(data.train_batches(args.batch_size, 0, 0, "cpu"), args.batch_size,
                                               args.steps)
            step = step or time_step(batch, 3, args.width, args.steps)
            rows.append(dict(dataset=f"folder {args.image_size}px", workers=workers, first=first_s, loader=rate,
                             step=step))
            data.close()
    report(rows)
    return rows


def cli(argv=None):
    return main(parse_args(argv))
