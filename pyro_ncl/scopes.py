"""What one gate covers: a view, an image (both of its views), or the whole dataset.

A scope tells the model and the guide where the gate site lives and how a gate reaches the views:
    ``plate(batch)``          the data plate of the gate site (subsampled to the batch), or no plate;
    ``pool(per_view, batch)`` [2B, ...] per-view quantities (e.g. logits) → one row per gate of the batch;
    ``to_views(gate, batch)`` the batch's gates → [2B, K], one mask row per view.
Rows of a batch are view-major (rows i and i + B are the two views of image ``index[i]``, see ``EncodedBatch``).
"""
from __future__ import annotations

import contextlib

import pyro
import torch

from pyro_ncl.batch import EncodedBatch, views_plate


class ViewScope:
    """One gate per view: a plate over the 2N views of the dataset; gates [2B, K]."""

    name = "view"

    def plate(self, batch: EncodedBatch):
        return views_plate(batch)

    def pool(self, per_view: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        return per_view

    def to_views(self, gate: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        return gate


class ImageScope:
    """One gate per image, shared by its two views: a plate over the N images; gates [B, K]; per-view quantities
    are pooled by the mean of the image's two views."""

    name = "image"

    def plate(self, batch: EncodedBatch):
        return pyro.plate("images", size=batch.num_images, subsample=batch.index, device=batch.z.device, dim=-1)

    def pool(self, per_view: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        first, second = per_view.chunk(2, dim=0)
        return 0.5 * (first + second)

    def to_views(self, gate: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        return torch.cat([gate, gate], dim=0)


class GlobalScope:
    """One gate for the whole dataset (a global latent, no plate); gate [K] broadcast to every view."""

    name = "global"

    def plate(self, batch: EncodedBatch):
        return contextlib.nullcontext()

    def pool(self, per_view: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        return per_view.mean(0)

    def to_views(self, gate: torch.Tensor, batch: EncodedBatch) -> torch.Tensor:
        return gate.expand(batch.num_views, -1)


VIEW, IMAGE, GLOBAL = ViewScope(), ImageScope(), GlobalScope()
