"""A cheap look at the gates during training: a fixed sample of training images, evaluated at each epoch's end.

``GateMonitor(data, ...)`` takes up to ``MONITOR_IMAGES`` training images once (without augmentation: the first
ones of an in-memory dataset, whose files are in no class order; a fixed random spread over a file dataset,
whose files are sorted by class), keeps them on the CPU, and ``snapshot(system)`` runs them through the encoder and
the gate head in eval mode (``pyro_ncl.evaluation.eval_mode``: no gradient, BatchNorm statistics used and never
updated, no random draw), so that training continues exactly as without it.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from pyro_ncl.data.base import DataBundle
from pyro_ncl.evaluation import eval_mode
from pyro_ncl.trained_run import gate_frequency_by_class
from pyro_ncl.system import ContrastiveSystem

MONITOR_IMAGES = 512


def monitor_images(data: DataBundle, n: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [n', C, H, W] (normalised as for evaluation), y [n'] on the CPU; n' = min(n, training images)."""
    if hasattr(data, "train_samples") and hasattr(data, "eval_transform"):  # a file dataset (pyro_ncl.data.file_data)
        from pyro_ncl.data.file_data import spread_subset

        samples = spread_subset(data.train_samples, n)
        x = torch.stack([data.eval_image(path) for path, _ in samples])
        x = data.eval_normalise(x)  # uint8 from eval_transform, finished as the evaluation batches are
        return x, torch.tensor([label for _, label in samples])
    xs, ys, have = [], [], 0
    for x, y in data.eval_batches("train", batch_size, "cpu"):
        xs.append(x), ys.append(y)
        have += len(y)
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


class GateMonitor:
    """The gates a network gives a fixed sample of training images (gated systems only)."""

    def __init__(self, data: DataBundle, device, batch_size: int, num_images: int = MONITOR_IMAGES):
        self.x, self.y = monitor_images(data, num_images, batch_size)
        self.num_classes, self.device, self.batch_size = data.num_classes, device, batch_size

    def snapshot(self, system: ContrastiveSystem) -> Dict[str, torch.Tensor]:
        """probs [N, K]: the guide's own posterior q(m_d = 1 | x) (σ(a_d), or 0/1 for a point mass);
        class_frequency [C, K]: fraction of each class's images whose test-time gate (the mode) is open (NaN rows for
        classes absent from the sample); on the CPU."""
        probs, gates = [], []
        with eval_mode(system):
            for start in range(0, len(self.y), self.batch_size):
                x = self.x[start:start + self.batch_size].to(self.device)
                if system.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                out = system.features(x)
                probs.append(out["probs"].float().cpu())
                gates.append(out["gate"].float().cpu())
        return dict(probs=torch.cat(probs),
                    class_frequency=gate_frequency_by_class(torch.cat(gates), self.y, self.num_classes))
