"""Interpretability and retrieval metrics of evaluation features (see METHODS.md, "Metrics").

Every function takes torch tensors on any device, processes rows in chunks (memory stays O(chunk * K + C * K + K^2))
and returns python floats or small tensors. F is [N, K] features, y is [N] integer labels in [0, C).
A feature entry is *active* when |F| > eps; a dimension is active when it is active for at least one sample.
Per-dimension/per-class statistics are accumulated in float64 (float32 on MPS, which lacks float64); on the CPU the
elementwise passes walk F in blocks of at most CPU_BLOCK rows, so each block's temporaries stay in cache.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as nnf

EPS = 1e-5
CHUNK = 2048  # rows per chunk: a [2048, 2048] float64 block is 32 MiB
CPU_BLOCK = 512  # rows per elementwise pass on the CPU: [512, 2048] float32 temporaries (4 MiB) stay in cache


# ----------------------------------------------------------------------------------------------------------------------
# checks and accumulation helpers


def _check_features(F: torch.Tensor, name: str = "F") -> None:
    if not torch.is_tensor(F) or F.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, K], got {type(F).__name__} of shape {tuple(getattr(F, 'shape', ()))}")
    if not F.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {F.dtype}")


def _check_labels(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int], name: str = "y") -> int:
    """Validates y against F and returns the number of classes C."""
    if not torch.is_tensor(y) or y.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor [N] of class labels")
    if y.shape[0] != F.shape[0]:
        raise ValueError(f"features have {F.shape[0]} rows but {name} has {y.shape[0]} labels")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} holds negative labels")
    top = int(y.max()) + 1 if y.numel() else 0
    if num_classes is None:
        return max(top, 1)
    if top > num_classes:
        raise ValueError(f"{name} holds label {top - 1} but num_classes is {num_classes}")
    return num_classes


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def _acc_dtype(F: torch.Tensor) -> torch.dtype:
    """float64 accumulators, except on MPS (no float64 support)."""
    return torch.float32 if F.device.type == "mps" else torch.float64


def _work_dtype(F: torch.Tensor) -> torch.dtype:
    """dtype of the class-statistics matmuls over a block of rows of F: float32 only on the CPU with exact float32
    matmuls (precision "highest"; "high"/"medium" allow TF32/bf16 products), otherwise the accumulation dtype;
    float64 features stay float64."""
    if F.dtype == torch.float64:
        return F.dtype
    exact_fp32 = F.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
    return torch.float32 if exact_fp32 else _acc_dtype(F)


def _row_chunks(n: int, chunk: int) -> Iterable[slice]:
    _check_chunk(chunk)
    return (slice(i, min(i + chunk, n)) for i in range(0, n, chunk))


def _elementwise_chunks(F: torch.Tensor, chunk: int) -> Iterable[slice]:
    """Row slices for memory-bound elementwise passes: at most CPU_BLOCK rows on the CPU (cache), `chunk` elsewhere."""
    return _row_chunks(F.shape[0], min(chunk, CPU_BLOCK) if F.device.type == "cpu" else chunk)


def _class_stats(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int], eps: float, chunk: int):
    """One pass over F [N, K]: [C, K] active counts, [C, K] summed |F| over active entries, [C] class sizes and
    [K] bool nonzero columns (any F != 0, whatever eps)."""
    _check_features(F)
    C = _check_labels(F, y, num_classes)
    acc, work = _acc_dtype(F), _work_dtype(F)
    y = y.to(F.device).long()
    counts = torch.zeros(C, F.shape[1], dtype=acc, device=F.device)
    sums = torch.zeros_like(counts)
    nonzero = torch.zeros(F.shape[1], dtype=torch.bool, device=F.device)
    for rows in _elementwise_chunks(F, chunk):
        a = F[rows].to(work).abs()
        nonzero |= (a > 0).any(0)
        on = (a > eps).to(work)
        onehot = nnf.one_hot(y[rows], C).to(work).T  # [C, n]
        # per-block counts are <= the block size, exact in float32; accumulate in float64
        counts += (onehot @ on).to(acc)
        sums += (onehot @ a.mul_(on)).to(acc)
    sizes = torch.bincount(y, minlength=C).to(acc)
    return counts, sums, sizes, nonzero


def gram(F: torch.Tensor, chunk: int = CHUNK, cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[D, D] Gram matrix F[:, cols]^T F[:, cols] (cols: [K] bool mask or [D] indices; default all K columns),
    accumulated over row chunks in float64 (float32 on MPS).

    The products are float64 too: with float32 products the Gram's rounding noise (~1e-7 of its largest eigenvalue)
    turns the zero singular values of a low-rank F into ~3e-4 of the largest and inflates its effective rank.
    """
    _check_features(F)
    acc = _acc_dtype(F)
    if cols is not None and cols.dtype == torch.bool:
        cols = cols.nonzero().squeeze(1)
    D = F.shape[1] if cols is None else cols.numel()
    G = torch.zeros(D, D, dtype=acc, device=F.device)
    for rows in _row_chunks(F.shape[0], chunk):
        f = (F[rows] if cols is None else F[rows][:, cols]).to(acc)
        G += f.T @ f
    return G


def _entropy(P: torch.Tensor) -> torch.Tensor:
    """Natural-log entropy of each column of a non-negative [C, D] matrix normalised to sum 1 (0 log 0 = 0)."""
    p = P / P.sum(0, keepdim=True)
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(0)


def _mean_or_nan(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# sparsity and per-class activation statistics


def active_mask(F: torch.Tensor, eps: float = EPS, chunk: int = CHUNK) -> torch.Tensor:
    """[K] bool: dimension k is active (|F[:, k]| > eps) for at least one sample."""
    _check_features(F)
    mask = torch.zeros(F.shape[1], dtype=torch.bool, device=F.device)
    for rows in _elementwise_chunks(F, chunk):
        mask |= (F[rows].abs() > eps).any(0)
    return mask


def sparsity(F: torch.Tensor, eps: float = EPS, chunk: int = CHUNK) -> float:
    """Fraction of the N*K entries of F [N, K] with |F| <= eps."""
    _check_features(F)
    if F.numel() == 0:
        raise ValueError("F is empty")
    zeros = sum(int((F[rows].abs() <= eps).sum()) for rows in _elementwise_chunks(F, chunk))
    return zeros / F.numel()


def active_dims(F: torch.Tensor, eps: float = EPS, chunk: int = CHUNK) -> int:
    """Number of the K dimensions of F [N, K] with |F| > eps for at least one sample."""
    return int(active_mask(F, eps, chunk).sum())


def class_activation_counts(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                            eps: float = EPS, chunk: int = CHUNK) -> torch.Tensor:
    """[C, K] number of samples of class c with |F[:, k]| > eps. F: [N, K], y: [N]."""
    return _class_stats(F, y, num_classes, eps, chunk)[0]


def class_activation_sums(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                          eps: float = EPS, chunk: int = CHUNK) -> torch.Tensor:
    """[C, K] sum of |F[:, k]| over the samples of class c where it is active (|F| > eps). F: [N, K], y: [N]."""
    return _class_stats(F, y, num_classes, eps, chunk)[1]


def class_frequency(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None, eps: float = EPS,
                    chunk: int = CHUNK) -> torch.Tensor:
    """[C, K] fraction of the samples of class c with |F[:, k]| > eps (a {0, 1} gate with eps = 0.5: its open
    frequency per class). F: [N, K], y: [N]; classes without samples give NaN rows."""
    counts, _, sizes, _ = _class_stats(F, y, num_classes, eps, chunk)
    return counts / torch.where(sizes > 0, sizes, torch.full_like(sizes, math.nan)).unsqueeze(1)


def class_selective_share(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None, span: float = 0.5,
                          eps: float = EPS, chunk: int = CHUNK) -> float:
    """Share of the K dimensions whose active (or open) frequency differs by more than ``span`` between the class
    where it is highest and the class where it is lowest: dimensions that some classes use and others don't.
    Dimensions never active count as not selective. F: [N, K], y: [N]."""
    freq = class_frequency(F, y, num_classes, eps, chunk)
    present = ~torch.isnan(freq[:, 0]) if freq.shape[1] else torch.ones(freq.shape[0], dtype=torch.bool)
    freq = freq[present]
    if freq.shape[0] == 0:
        return math.nan
    spread = freq.max(0).values - freq.min(0).values
    return float((spread > span).double().mean())


# ----------------------------------------------------------------------------------------------------------------------
# semantic consistency and entropies


def _consistency_from_counts(counts: torch.Tensor) -> float:
    total = counts.sum(0)
    on = total > 0
    return _mean_or_nan(counts[:, on].max(0).values / total[on])


def _entropies_from_stats(counts: torch.Tensor, sums: torch.Tensor, sizes: torch.Tensor) -> Dict[str, float]:
    on = counts.sum(0) > 0
    means = sums / sizes.clamp(min=1).unsqueeze(1)  # empty classes have zero sums, hence zero mean
    return {
        "entropy_sum": _mean_or_nan(_entropy(sums[:, on])),
        "entropy_mean": _mean_or_nan(_entropy(means[:, on])),
        "entropy_freq": _mean_or_nan(_entropy(counts[:, on])),
    }


def semantic_consistency(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                         eps: float = EPS, chunk: int = CHUNK) -> float:
    """Mean over active dimensions of the most frequent class's share among the samples where the dimension is active.

    F: [N, K], y: [N]. One-hot-per-class features give 1.0; dense features give the largest class share.
    NaN when no dimension is active.
    """
    return _consistency_from_counts(class_activation_counts(F, y, num_classes, eps, chunk))


def weighted_consistency(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                         eps: float = EPS, chunk: int = CHUNK) -> float:
    """Activation-weighted consistency: the share of all active activation mass that lies in its dimension's
    majority class, Σ_d max_c A_cd / Σ_{c,d} A_cd with A_cd the summed |F| of class c's samples on dimension d.

    The same as averaging each dimension's class share of activation mass with weights proportional to the
    dimension's mass, so a dimension active on one image with a small activation counts for little (it scores 1.0
    for free in ``semantic_consistency``). F: [N, K], y: [N]; NaN when nothing is active.
    """
    sums = class_activation_sums(F, y, num_classes, eps, chunk)
    total = float(sums.sum())
    return float(sums.max(0).values.sum()) / total if total > 0 else math.nan


def semantic_entropies(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                       eps: float = EPS, chunk: int = CHUNK) -> Dict[str, float]:
    """Entropies (nats) of each active dimension's class distribution, averaged over active dimensions.

    F: [N, K], y: [N]. Distribution over classes of dimension k proportional to:
    entropy_sum: summed active |F|; entropy_mean: that sum divided by the class size; entropy_freq: active counts.
    Lower = more class-specific. NaN when no dimension is active.
    """
    return _entropies_from_stats(*_class_stats(F, y, num_classes, eps, chunk)[:3])


# ----------------------------------------------------------------------------------------------------------------------
# effective rank and orthogonality


def _effective_rank_from_gram(G: torch.Tensor) -> Dict[str, float]:
    if G.numel() == 0:
        return {"effective_rank": 0.0, "singular_value_entropy": float("nan")}
    lam = torch.linalg.eigvalsh(G)
    tol = lam.max().clamp(min=0) * G.shape[0] * torch.finfo(G.dtype).eps  # numerically-zero eigenvalues
    s = torch.where(lam > tol, lam, torch.zeros_like(lam)).sqrt()
    if s.sum() <= 0:
        return {"effective_rank": 0.0, "singular_value_entropy": float("nan")}
    h = float(_entropy(s.unsqueeze(1)))
    return {"effective_rank": math.exp(h), "singular_value_entropy": h}


def _orthogonality_from_gram(G: torch.Tensor, on: Optional[torch.Tensor] = None) -> float:
    if on is not None:
        G = G[on][:, on]
    d = G.shape[0]
    if d < 2:
        return float("nan")
    norm = G.diagonal().sqrt()
    C = (G / norm.unsqueeze(0) / norm.unsqueeze(1)).abs()
    return float((C.sum() - C.diagonal().sum()) / (d * (d - 1)))


def effective_rank(F: torch.Tensor, chunk: int = CHUNK) -> Dict[str, float]:
    """Roy & Vetterli effective rank of F [N, K]: exp(H), H the entropy of the singular values normalised to sum 1.

    Singular values come from the eigenvalues of the chunk-accumulated Gram F^T F (eigenvalues below
    K * machine-eps * max are treated as 0). Returns {"effective_rank": exp(H), "singular_value_entropy": H}.
    All-zero columns (zero singular values, no contribution to H) are left out of the Gram.
    """
    return _effective_rank_from_gram(gram(F, chunk, active_mask(F, 0.0, chunk)))


def orthogonality(F: torch.Tensor, eps: float = EPS, chunk: int = CHUNK) -> float:
    """Mean |cosine| between distinct active columns of F [N, K]: sum_{i != j} |C_ij| / (d (d - 1)), C = normalised F^T F.

    0 for orthogonal columns; NaN with fewer than 2 active dimensions.
    """
    on = active_mask(F, eps, chunk)
    return _orthogonality_from_gram(gram(F, chunk, on))


# ----------------------------------------------------------------------------------------------------------------------
# dimension importance, retrieval, feature selection


def dimension_importance(F: torch.Tensor, how: str = "column_sum", eps: float = EPS, chunk: int = CHUNK) -> torch.Tensor:
    """[K] importance of each dimension of F [N, K] (compute on the training split).

    how="column_sum": column sums of |F| after L2-normalising each row; how="frequency": fraction of samples where
    the dimension is active (|F| > eps; the gate frequency when F is gated). Other rankings (e.g. triCL's s) can be
    passed directly as `importance` to retrieval_precision / feature_selection.
    """
    _check_features(F)
    if how not in ("column_sum", "frequency"):
        raise ValueError(f"how must be 'column_sum' or 'frequency', got {how!r}")
    acc = _acc_dtype(F)
    out = torch.zeros(F.shape[1], dtype=acc, device=F.device)
    for rows in _row_chunks(F.shape[0], chunk):
        f = F[rows].to(acc)
        if how == "column_sum":
            out += nnf.normalize(f, dim=1).abs().sum(0)
        else:
            out += (f.abs() > eps).sum(0)
    return out / max(F.shape[0], 1) if how == "frequency" else out


def _default_ks(K: int) -> list:
    ks, k = [], 16
    while k < K:
        ks.append(k)
        k *= 2
    return ks + [K]


def _top_dims(importance: torch.Tensor, k: int, K: int) -> torch.Tensor:
    if importance.dim() != 1 or importance.shape[0] != K:
        raise ValueError(f"importance must have shape [{K}], got {tuple(importance.shape)}")
    if not 1 <= k <= K:
        raise ValueError(f"k must lie in [1, {K}], got {k}")
    return importance.topk(k).indices


def _precision_at(X: torch.Tensor, y: torch.Tensor, ps: Sequence[int], chunk: int) -> Dict[int, float]:
    """Mean fraction of each row's p nearest (cosine, self excluded) rows sharing its label. X: [N, k] unit rows."""
    N, pmax = X.shape[0], max(ps)
    hits = {p: 0.0 for p in ps}
    for rows in _row_chunks(N, chunk):
        sim = X[rows] @ X.T  # [n, N]
        idx = torch.arange(rows.start, rows.stop, device=X.device)
        sim[torch.arange(len(idx), device=X.device), idx] = -float("inf")
        nn_idx = sim.topk(pmax, dim=1).indices
        same = (y[nn_idx] == y[idx].unsqueeze(1)).double()
        for p in ps:
            hits[p] += float(same[:, :p].mean(1).sum())
    return {p: hits[p] / N for p in ps}


def retrieval_precision(train_F: torch.Tensor, test_F: torch.Tensor, test_y: torch.Tensor,
                        importance: Optional[torch.Tensor] = None, ks: Optional[Sequence[int]] = None,
                        ps: Sequence[int] = (1, 3, 5, 10), chunk: int = 1024) -> Dict[int, Dict[int, float]]:
    """Retrieval precision on the test set using the top-k dimensions ranked by importance.

    train_F: [N_train, K] (only used for importance="column_sum" when importance is None); test_F: [N, K]; test_y: [N];
    importance: [K]. For each k (default 16, 32, ..., K) keep the top-k dimensions, L2-renormalise the test rows, and
    for each query take its p cosine nearest neighbours among the other test rows; P@p = mean fraction sharing the
    query's label. Returns {k: {p: precision}}.
    """
    _check_features(train_F, "train_F")
    _check_features(test_F, "test_F")
    _check_labels(test_F, test_y, None, "test_y")
    K = test_F.shape[1]
    if train_F.shape[1] != K:
        raise ValueError(f"train_F has {train_F.shape[1]} dims but test_F has {K}")
    if not ps or min(ps) < 1 or max(ps) > test_F.shape[0] - 1:
        raise ValueError(f"each p must lie in [1, {test_F.shape[0] - 1}], got {tuple(ps)}")
    if importance is None:
        importance = dimension_importance(train_F)
    importance = importance.to(test_F.device)
    y = test_y.to(test_F.device)
    out = {}
    for k in (ks or _default_ks(K)):
        X = nnf.normalize(test_F[:, _top_dims(importance, k, K)], dim=1)
        out[k] = _precision_at(X, y, ps, chunk)
    return out


def feature_selection(train_F: torch.Tensor, train_y: torch.Tensor, test_F: torch.Tensor, test_y: torch.Tensor,
                      importance: Optional[torch.Tensor] = None, ks: Optional[Sequence[int]] = None,
                      probe_fn: Optional[Callable[..., float]] = None) -> Dict[int, float]:
    """Probe accuracy on the top-k dimensions ranked by importance [K] (default: column sums on train_F).

    train_F: [N_train, K], train_y: [N_train], test_F: [N_test, K], test_y: [N_test]; probe_fn(train_X, train_y, test_X,
    test_y) -> accuracy (default probes.linear_probe). Returns {k: accuracy} for k in ks (default 16, 32, ..., K).
    """
    from .probes import linear_probe

    _check_features(train_F, "train_F")
    _check_features(test_F, "test_F")
    _check_labels(train_F, train_y, None, "train_y")
    _check_labels(test_F, test_y, None, "test_y")
    K = train_F.shape[1]
    if test_F.shape[1] != K:
        raise ValueError(f"train_F has {K} dims but test_F has {test_F.shape[1]}")
    probe_fn = probe_fn or linear_probe
    if importance is None:
        importance = dimension_importance(train_F)
    out = {}
    for k in (ks or _default_ks(K)):
        dims = _top_dims(importance.to(train_F.device), k, K)
        out[k] = float(probe_fn(train_F[:, dims], train_y, test_F[:, dims.to(test_F.device)], test_y))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# suite


def interpretability_suite(F: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None,
                           eps: float = EPS, chunk: int = CHUNK) -> Dict[str, float]:
    """All label-based and label-free interpretability metrics of F [N, K] with labels y [N], in two passes over F.

    Keys: sparsity, active_dims, semantic_consistency, entropy_sum, entropy_mean, entropy_freq, effective_rank,
    singular_value_entropy, orthogonality.
    """
    counts, sums, sizes, nonzero = _class_stats(F, y, num_classes, eps, chunk)
    on = counts.sum(0) > 0
    G = gram(F, chunk, nonzero)  # all-zero columns add nothing to either metric
    out = {
        "sparsity": 1.0 - float(counts.sum()) / F.numel() if F.numel() else float("nan"),
        "active_dims": int(on.sum()),
        "semantic_consistency": _consistency_from_counts(counts),
    }
    out.update(_entropies_from_stats(counts, sums, sizes))
    out.update(_effective_rank_from_gram(G))
    out["orthogonality"] = _orthogonality_from_gram(G, on[nonzero])
    return out
