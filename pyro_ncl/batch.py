"""The encoded minibatch that the model and the guide share (the encoder runs once per view, outside both)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyro
import torch


@dataclass
class EncodedBatch:
    """Both views of B images, stacked view-major: rows i and i + B are the two views of image ``index[i]``.

    h: [2B, F] backbone features; z: [2B, K] (non-negative) projector outputs; index: [B] dataset indices;
    num_images: N, the size of the training set; labels: [B] class labels (only supervised likelihoods read them).
    """

    h: torch.Tensor
    z: torch.Tensor
    index: torch.Tensor
    num_images: int
    labels: Optional[torch.Tensor] = None

    @property
    def num_views(self) -> int:
        return self.z.shape[0]

    @property
    def dataset_views(self) -> int:
        """2N: the number of views in the whole dataset (per epoch)."""
        return 2 * self.num_images

    @property
    def view_index(self) -> torch.Tensor:
        """[2B] indices of this batch's views among the 2N views of the dataset."""
        return torch.cat([self.index, self.index + self.num_images])


def views_plate(batch: EncodedBatch) -> pyro.plate:
    """The data plate over all 2N views, subsampled to this batch's 2B views (scale 2N / 2B)."""
    return pyro.plate("views", size=batch.dataset_views, subsample=batch.view_index, device=batch.z.device, dim=-1)
