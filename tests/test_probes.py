"""kNN and linear probes on synthetic Gaussian blobs."""
import numpy as np
import pytest
import torch

from pyro_ncl.probes import knn_accuracy, linear_probe


def blobs(n, d=32, c=5, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(123)) * 3.0
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] + scale * torch.randn(n, d, generator=g), y


def split():
    X, y = blobs(1200)
    return X[:1000], y[:1000], X[1000:], y[1000:]


def ref_knn(train_X, train_y, test_X, k, t, c):
    a = train_X.numpy() / np.linalg.norm(train_X.numpy(), axis=1, keepdims=True)
    preds = []
    for q in test_X.numpy():
        sim = a @ (q / np.linalg.norm(q))
        nn = np.argsort(-sim)[:k]
        votes = np.zeros(c)
        for j in nn:
            votes[train_y[j]] += np.exp(sim[j] / t)
        preds.append(votes.argmax())
    return np.array(preds)


def test_knn_separable_blobs():
    assert knn_accuracy(*split()) >= 0.95


def test_knn_matches_loop_and_chunking():
    X, y = blobs(300, d=8, c=3, scale=4.0, seed=1)  # overlapping blobs: accuracy well below 1
    tr, ty, te, tey = X[:200].double(), y[:200], X[200:].double(), y[200:]
    ref = float((ref_knn(tr, ty, te, 7, 0.1, 3) == tey.numpy()).mean())
    assert ref < 0.95
    assert knn_accuracy(tr, ty, te, tey, k=7, temperature=0.1, chunk=13) == pytest.approx(ref)
    assert knn_accuracy(tr, ty, te, tey, k=7, temperature=0.1) == pytest.approx(ref)


def test_linear_probe_separable_blobs_and_deterministic():
    a = linear_probe(*split(), epochs=10, batch_size=128)
    assert a >= 0.95
    assert linear_probe(*split(), epochs=10, batch_size=128) == a


def test_linear_probe_beats_chance_only_with_signal():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(1200, 16, generator=g)
    y = torch.randint(0, 2, (1200,), generator=g)
    assert linear_probe(X[:1000], y[:1000], X[1000:], y[1000:]) < 0.6  # labels are noise
    X[:, 0] += 4.0 * y  # signal along one feature only (Bayes accuracy 0.977)
    assert linear_probe(X[:1000], y[:1000], X[1000:], y[1000:], epochs=100) >= 0.95  # 2 batches/epoch: more epochs


def test_probes_reject_bad_input():
    tr, ty, te, tey = split()
    with pytest.raises(ValueError, match="train_X has 1000 rows but train_y has 999"):
        linear_probe(tr, ty[:-1], te, tey)
    with pytest.raises(ValueError, match="dims"):
        knn_accuracy(tr, ty, te[:, :5], tey)
    with pytest.raises(ValueError, match="num_classes"):
        knn_accuracy(tr, ty, te, tey, num_classes=2)
