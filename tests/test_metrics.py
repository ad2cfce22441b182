"""Metrics against straightforward per-dimension loop references, hand-made cases, and chunking."""
import math

import numpy as np
import pytest
import torch

from pyro_ncl import metrics as M

EPS = 1e-5


def sparse_features(n=200, k=12, c=4, seed=0):
    """Non-negative sparse float64 features with class-dependent activation rates, one dead column, labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    rate = torch.rand(c, k, generator=g) ** 2  # class-specific activation probability per dim
    on = torch.rand(n, k, generator=g, dtype=torch.float64) < rate[y].double()
    F = torch.rand(n, k, generator=g, dtype=torch.float64) * on
    F[:, 3] = 0.0  # a dead dimension
    F[0, 5] = EPS / 2  # below eps: counts as inactive
    return F, y


# ---------------------------------------------------------------- loop references (numpy, one dimension at a time)


def ref_stats(F, y, c):
    F, y = np.abs(F.numpy()), y.numpy()
    out = []
    for d in range(F.shape[1]):
        on = F[:, d] > EPS
        if not on.any():
            continue
        freq = np.bincount(y[on], minlength=c).astype(float)
        sums = np.array([F[(y == j) & on, d].sum() for j in range(c)])
        means = np.array([sums[j] / max((y == j).sum(), 1) for j in range(c)])
        out.append((freq, sums, means))
    return out


def ref_entropy(v):
    p = v / v.sum()
    return -sum(x * math.log(x) for x in p if x > 0)


def ref_consistency(F, y, c):
    return np.mean([freq.max() / freq.sum() for freq, _, _ in ref_stats(F, y, c)])


def ref_orthogonality(F):
    F = F.numpy()
    cols = [F[:, d] for d in range(F.shape[1]) if (np.abs(F[:, d]) > EPS).any()]
    d, total = len(cols), 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                total += abs(cols[i] @ cols[j]) / (np.linalg.norm(cols[i]) * np.linalg.norm(cols[j]))
    return total / (d * (d - 1))


def ref_precision(X, y, importance, k, p):
    dims = np.argsort(-importance)[:k]
    Z = X[:, dims] / np.linalg.norm(X[:, dims], axis=1, keepdims=True)
    fracs = []
    for i in range(len(Z)):
        sims = [(Z[i] @ Z[j], j) for j in range(len(Z)) if j != i]
        nbrs = [j for _, j in sorted(sims, reverse=True)[:p]]
        fracs.append(np.mean([y[j] == y[i] for j in nbrs]))
    return float(np.mean(fracs))


# ---------------------------------------------------------------- against the references


def test_sparsity_and_active_dims_match_loop():
    F, _ = sparse_features()
    A = F.numpy()
    assert M.sparsity(F) == pytest.approx(np.mean(np.abs(A) <= EPS), abs=1e-12)
    assert M.active_dims(F) == sum((np.abs(A[:, d]) > EPS).any() for d in range(A.shape[1]))
    assert M.active_dims(F) == 11


def test_class_counts_and_sums_match_loop():
    F, y = sparse_features()
    A, Y = F.numpy(), y.numpy()
    counts = M.class_activation_counts(F, y, 4).numpy()
    sums = M.class_activation_sums(F, y, 4).numpy()
    for c in range(4):
        for d in range(F.shape[1]):
            on = (Y == c) & (np.abs(A[:, d]) > EPS)
            assert counts[c, d] == on.sum()
            assert sums[c, d] == pytest.approx(np.abs(A[on, d]).sum(), abs=1e-9)


def test_semantic_consistency_matches_loop():
    F, y = sparse_features()
    assert M.semantic_consistency(F, y, 4) == pytest.approx(ref_consistency(F, y, 4), abs=1e-6)


def test_weighted_consistency_by_hand_and_by_loop():
    """Σ_d max_c A_cd / Σ A: per dimension the majority class's share of its activation mass, weighted by the mass;
    a dimension active on a single image with a tiny value counts for little (it counts 1.0 by count)."""
    F = torch.tensor([[1.0, 0.0, 0.01], [1.0, 0.5, 0.0], [0.0, 0.5, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # dim 0: class 0 holds 2.0, class 1 2.0 → 2.0; dim 1: 0.5 and 0.5 → 0.5; dim 2: 0.01 (class 0 only)
    assert M.weighted_consistency(F, y, 2) == pytest.approx((2.0 + 0.5 + 0.01) / (4.0 + 1.0 + 0.01), abs=1e-12)
    assert M.semantic_consistency(F, y, 2) == pytest.approx((2 / 3 + 1 / 2 + 1.0) / 3, abs=1e-12)
    F, y = sparse_features()
    A = np.zeros((4, F.shape[1]))
    for i in range(F.shape[0]):
        for d in range(F.shape[1]):
            if abs(float(F[i, d])) > M.EPS:
                A[int(y[i]), d] += abs(float(F[i, d]))
    assert M.weighted_consistency(F, y, 4) == pytest.approx(A.max(0).sum() / A.sum(), abs=1e-6)
    assert math.isnan(M.weighted_consistency(torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2))


def test_semantic_entropies_match_loop():
    F, y = sparse_features()
    stats = ref_stats(F, y, 4)
    got = M.semantic_entropies(F, y, 4)
    assert got["entropy_freq"] == pytest.approx(np.mean([ref_entropy(f) for f, _, _ in stats]), abs=1e-6)
    assert got["entropy_sum"] == pytest.approx(np.mean([ref_entropy(s) for _, s, _ in stats]), abs=1e-6)
    assert got["entropy_mean"] == pytest.approx(np.mean([ref_entropy(m) for _, _, m in stats]), abs=1e-6)
    # imbalanced classes make the mean-based entropy differ from the sum-based one
    assert abs(got["entropy_mean"] - got["entropy_sum"]) > 1e-4


def test_effective_rank_matches_svd():
    F, _ = sparse_features()
    s = np.linalg.svd(F.numpy(), compute_uv=False)
    p = s / s.sum()
    h = -np.sum(p[p > 0] * np.log(p[p > 0]))
    got = M.effective_rank(F)
    assert got["singular_value_entropy"] == pytest.approx(h, abs=1e-6)
    assert got["effective_rank"] == pytest.approx(math.exp(h), abs=1e-6)


def test_orthogonality_matches_loop():
    F, _ = sparse_features()
    assert M.orthogonality(F) == pytest.approx(ref_orthogonality(F), abs=1e-6)


def test_suite_matches_individual_metrics():
    F, y = sparse_features()
    suite = M.interpretability_suite(F, y, 4)
    assert suite["sparsity"] == pytest.approx(M.sparsity(F), abs=1e-12)
    assert suite["active_dims"] == M.active_dims(F)
    assert suite["semantic_consistency"] == pytest.approx(M.semantic_consistency(F, y, 4), abs=1e-12)
    for key, val in M.semantic_entropies(F, y, 4).items():
        assert suite[key] == pytest.approx(val, abs=1e-12)
    for key, val in M.effective_rank(F).items():
        assert suite[key] == pytest.approx(val, abs=1e-12)
    assert suite["orthogonality"] == pytest.approx(M.orthogonality(F), abs=1e-12)


def test_chunking_gives_same_results():
    F, y = sparse_features(n=203)
    full = M.interpretability_suite(F, y, 4, chunk=10_000)
    small = M.interpretability_suite(F, y, 4, chunk=17)
    for key in full:
        assert small[key] == pytest.approx(full[key], abs=1e-10), key
    assert M.sparsity(F, chunk=7) == pytest.approx(M.sparsity(F), abs=1e-12)
    assert M.active_dims(F, chunk=7) == M.active_dims(F)
    assert M.orthogonality(F, chunk=7) == pytest.approx(full["orthogonality"], abs=1e-10)
    assert torch.allclose(M.dimension_importance(F, chunk=7), M.dimension_importance(F))


# ---------------------------------------------------------------- hand-made cases


def test_one_hot_class_features_are_fully_consistent():
    y = torch.arange(40) % 4
    F = torch.zeros(40, 8, dtype=torch.float64)
    F[torch.arange(40), 2 * y] = 1.0  # class c owns dims 2c and 2c + 1
    F[torch.arange(40), 2 * y + 1] = torch.rand(40, dtype=torch.float64) + 0.5
    assert M.semantic_consistency(F, y) == pytest.approx(1.0)
    ent = M.semantic_entropies(F, y)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in ent.values())


def test_dense_signed_features_score_largest_class_share():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    F = torch.randn(100, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    F[F.abs() <= EPS] = 1.0  # make sure every entry is active
    assert M.semantic_consistency(F, y) == pytest.approx(0.5)
    assert M.sparsity(F) == 0.0
    ent = M.semantic_entropies(F, y)
    share = np.array([0.5, 0.3, 0.2])
    assert ent["entropy_freq"] == pytest.approx(ref_entropy(share), abs=1e-12)


def test_orthogonal_columns_have_zero_orthogonality():
    Q, _ = torch.linalg.qr(torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    assert M.orthogonality(Q) == pytest.approx(0.0, abs=1e-12)
    F = torch.zeros(30, 5, dtype=torch.float64)
    F[:10, 0], F[10:20, 1], F[20:, 2] = 1.0, 2.0, 3.0  # disjoint supports, two dead columns
    assert M.orthogonality(F) == pytest.approx(0.0, abs=1e-12)
    F[:, 3] = F[:, 0]  # a duplicate column: |cos| = 1 for the pair (0, 3), twice among 4 * 3 ordered pairs
    assert M.orthogonality(F) == pytest.approx(2 / 12)


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_rank(r):
    g = torch.Generator().manual_seed(r)
    U, _ = torch.linalg.qr(torch.randn(100, r, dtype=torch.float64, generator=g))
    V, _ = torch.linalg.qr(torch.randn(20, r, dtype=torch.float64, generator=g))
    F = 3.0 * U @ V.T
    got = M.effective_rank(F)
    assert got["effective_rank"] == pytest.approx(r, abs=1e-6)
    assert got["singular_value_entropy"] == pytest.approx(math.log(r), abs=1e-6)


def test_effective_rank_float32_zero_columns():
    F = torch.zeros(64, 32)
    F[:, :4] = torch.eye(64)[:, :4] * 2.0
    assert M.effective_rank(F)["effective_rank"] == pytest.approx(4.0, abs=1e-6)


def test_effective_rank_of_low_rank_float32_features_matches_svd():
    # ReLU of a rank-20 product: a few large singular values and many tiny ones, as in collapsed features
    g = torch.Generator().manual_seed(0)
    F = (torch.rand(2000, 20, generator=g) @ torch.rand(20, 256, generator=g)).relu().float()
    s = np.linalg.svd(F.double().numpy(), compute_uv=False)
    expected = math.exp(ref_entropy(s))
    assert M.effective_rank(F, chunk=512)["effective_rank"] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- importance, retrieval, feature selection


def test_dimension_importance_column_sum_and_frequency():
    F, _ = sparse_features()
    A = F.numpy()
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    ref = np.sum(np.abs(A) / np.maximum(norms, 1e-12), axis=0)
    assert np.allclose(M.dimension_importance(F).numpy(), ref, atol=1e-9)
    assert np.allclose(M.dimension_importance(F, "frequency").numpy(), (np.abs(A) > EPS).mean(0))
    with pytest.raises(ValueError, match="how must be"):
        M.dimension_importance(F, "bogus")


def test_retrieval_precision_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    train = torch.rand(30, 10, dtype=torch.float64, generator=g)
    test = torch.rand(25, 10, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (25,), generator=g)
    imp = M.dimension_importance(train)
    got = M.retrieval_precision(train, test, y, imp, ks=(2, 5, 10), ps=(1, 3, 5), chunk=4)
    assert set(got) == {2, 5, 10}
    for k in (2, 5, 10):
        for p in (1, 3, 5):
            assert got[k][p] == pytest.approx(ref_precision(test.numpy(), y.numpy(), imp.numpy(), k, p), abs=1e-12)
    # importance defaults to column sums on the training split
    assert M.retrieval_precision(train, test, y, ks=(5,), ps=(3,)) == {5: {3: got[5][3]}}


def test_retrieval_default_ks():
    g = torch.Generator().manual_seed(4)
    F = torch.rand(40, 100, generator=g)
    y = torch.randint(0, 2, (40,), generator=g)
    assert list(M.retrieval_precision(F, F, y, ps=(1,))) == [16, 32, 64, 100]


def test_feature_selection_uses_top_dims():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (1200,), generator=g)
    X = torch.randn(1200, 6, generator=g)
    X[:, 4] += 4.0 * y  # the only informative dim
    imp = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    seen = []

    def probe(tr_x, tr_y, te_x, te_y):
        seen.append(tr_x.shape[1])
        assert torch.equal(tr_x, X[:1000, : tr_x.shape[1]]) and torch.equal(te_x, X[1000:, : te_x.shape[1]])
        return 0.5

    assert M.feature_selection(X[:1000], y[:1000], X[1000:], y[1000:], imp, ks=(2, 4), probe_fn=probe) == {2: 0.5, 4: 0.5}
    assert seen == [2, 4]
    acc = M.feature_selection(X[:1000], y[:1000], X[1000:], y[1000:], imp, ks=(4, 5))
    assert acc[4] < 0.75 and acc[5] > 0.95


# ---------------------------------------------------------------- bad input


def test_bad_input_raises():
    F, y = sparse_features()
    with pytest.raises(ValueError, match="rows but y has"):
        M.semantic_consistency(F, y[:-1])
    with pytest.raises(ValueError, match="num_classes"):
        M.semantic_entropies(F, y, num_classes=2)
    with pytest.raises(ValueError, match="2-D"):
        M.sparsity(F[0])
    with pytest.raises(ValueError, match="importance must have shape"):
        M.retrieval_precision(F, F, y, torch.ones(5), ks=(2,))
    with pytest.raises(ValueError, match="chunk"):
        M.active_dims(F, chunk=0)


def test_all_zero_features():
    F = torch.zeros(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    suite = M.interpretability_suite(F, y)
    assert suite["sparsity"] == 1.0 and suite["active_dims"] == 0 and suite["effective_rank"] == 0.0
    assert math.isnan(suite["semantic_consistency"]) and math.isnan(suite["orthogonality"])


def test_matmuls_stay_exact_under_reduced_float32_matmul_precision():
    F, y = sparse_features(n=300, k=40, c=16)  # 16 classes: large enough that a reduced-precision kernel kicks in
    F32 = F.float()
    exact_gram = F32.double().T @ F32.double()
    A = F32.double().abs()
    exact_sums = torch.stack([(A * (A > EPS))[y == c].sum(0) for c in range(16)])
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # allows bf16 / TF32 products (bf16 on CPUs with AMX)
        G = M.gram(F32, chunk=64)
        sums = M.class_activation_sums(F32, y, 16, chunk=64)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.allclose(G, exact_gram, rtol=1e-6, atol=1e-6)
    assert torch.allclose(sums, exact_sums, rtol=1e-6, atol=1e-6)
