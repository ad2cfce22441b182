"""Evaluation probes on frozen features: weighted kNN (the InstDisc/SimCLR monitor) and a linear probe."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as nnf


def _check_split(X: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(X) or X.dim() != 2 or not X.is_floating_point():
        raise ValueError(f"{name}_X must be a 2-D floating-point tensor [N, D]")
    if not torch.is_tensor(y) or y.dim() != 1 or y.is_floating_point():
        raise ValueError(f"{name}_y must be a 1-D integer tensor [N]")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}_X has {X.shape[0]} rows but {name}_y has {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise ValueError(f"{name}_X is empty")
    if int(y.min()) < 0:
        raise ValueError(f"{name}_y holds negative labels")


def _check_pair(train_X, train_y, test_X, test_y, num_classes: Optional[int]) -> int:
    """Validates both splits and returns the number of classes."""
    _check_split(train_X, train_y, "train")
    _check_split(test_X, test_y, "test")
    if train_X.shape[1] != test_X.shape[1]:
        raise ValueError(f"train_X has {train_X.shape[1]} dims but test_X has {test_X.shape[1]}")
    top = max(int(train_y.max()), int(test_y.max())) + 1
    if num_classes is None:
        return top
    if top > num_classes:
        raise ValueError(f"labels reach {top - 1} but num_classes is {num_classes}")
    return num_classes


KNN_TEMPERATURE = 0.07
BLOCK = 2 ** 25  # similarity entries per chunk of a kNN search (128 MiB in float32)


@torch.no_grad()
def neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int, block: int = BLOCK):
    """Cosine similarities [N, k] (descending) and indices [N, k] of each query's k nearest rows of ``bank`` [M, D]
    (both L2-normalised), computed on the bank's device, ``block`` similarity entries at a time."""
    bank = nnf.normalize(bank, dim=1)
    k = min(k, bank.shape[0])
    rows = max(1, block // max(1, bank.shape[0]))
    sims, idx = [], []
    for start in range(0, queries.shape[0], rows):
        q = nnf.normalize(queries[start:start + rows].to(bank.device, bank.dtype), dim=1)
        s, i = (q @ bank.T).topk(k, dim=1)
        sims.append(s), idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def knn_votes(sims: torch.Tensor, idx: torch.Tensor, bank_y: torch.Tensor, num_classes: int,
              temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """[N, C] weighted kNN votes: Σ over the k neighbours of class c of exp(cos / T); the prediction is the argmax."""
    votes = torch.zeros(sims.shape[0], num_classes, dtype=sims.dtype, device=sims.device)
    return votes.scatter_add_(1, bank_y.to(sims.device).long()[idx], (sims / temperature).exp())


@torch.no_grad()
def knn_accuracy(train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor,
                 k: int = 20, temperature: float = KNN_TEMPERATURE, num_classes: Optional[int] = None,
                 chunk: int = 1024) -> float:
    """Weighted kNN accuracy in [0, 1]: cosine similarity of L2-normalised features, votes weighted exp(sim / T)
    (``neighbours``, ``knn_votes``).

    train_X: [N, D], train_y: [N], test_X: [M, D], test_y: [M]; computed on train_X's device, ``chunk`` test rows at
    a time.
    """
    C = _check_pair(train_X, train_y, test_X, test_y, num_classes)
    if k < 1 or temperature <= 0 or chunk < 1:
        raise ValueError(f"need k >= 1, temperature > 0 and chunk >= 1, got k={k}, temperature={temperature}, "
                         f"chunk={chunk}")
    sims, idx = neighbours(test_X, train_X, k, block=chunk * train_X.shape[0])
    votes = knn_votes(sims, idx, train_y, C, temperature)
    return int((votes.argmax(1) == test_y.to(votes.device)).sum()) / test_X.shape[0]


def linear_probe(train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor,
                 num_classes: Optional[int] = None, epochs: int = 30, batch_size: int = 512, lr: float = 1e-2,
                 weight_decay: float = 1e-5, seed: int = 0, device: Optional[torch.device] = None) -> float:
    """Test accuracy in [0, 1] of a linear classifier trained on frozen, standardised features.

    train_X: [N, D], train_y: [N], test_X: [M, D], test_y: [M]. Features are standardised with the train mean/std;
    nn.Linear(D, C) starts at zero and is trained with Adam (cosine-decayed lr, L2 weight_decay) on cross-entropy
    for `epochs` passes of shuffled minibatches. Deterministic given `seed` (on a deterministic device).
    """
    C = _check_pair(train_X, train_y, test_X, test_y, num_classes)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    device = torch.device(device) if device is not None else train_X.device
    X = train_X.detach().to(device, torch.float32)
    y = train_y.to(device).long()
    mean, std = X.mean(0), X.std(0).clamp(min=1e-6)
    X = (X - mean) / std

    model = torch.nn.Linear(X.shape[1], C).to(device)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(X.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=gen).to(device)
        for i in range(0, X.shape[0], batch_size):
            b = perm[i:i + batch_size]
            loss = nnf.cross_entropy(model(X[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    correct = 0
    with torch.no_grad():
        for i in range(0, test_X.shape[0], 8192):
            Xt = (test_X[i:i + 8192].detach().to(device, torch.float32) - mean) / std
            correct += int((model(Xt).argmax(1) == test_y[i:i + 8192].to(device)).sum())
    return correct / test_X.shape[0]
