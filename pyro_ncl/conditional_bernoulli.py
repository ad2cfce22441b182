"""The exactly-k conditional Bernoulli distribution: the k-subset law of SIMPLE (Ahmed et al., ICLR 2023).

    q(m | θ) = Π_d σ(θ_d)^{m_d} (1 − σ(θ_d))^{1 − m_d} · 1[Σ_d m_d = k] / P(Σ_d m_d = k)
             = exp(θ·m) / e_k(exp θ)                   on masks m ∈ {0,1}^K with exactly k ones,

e_k the k-th elementary symmetric polynomial (``at_most=True``: at most k ones, Z = Σ_{c ≤ k} e_c). Everything is
computed over a balanced binary tree of the dimensions (K padded to a power of two P with dimensions of weight 0),
in ⌈log₂ K⌉ levels, O(K·k) work (``Tree``):

* **inside** (upward): each node holds U[j] = log e_j(its dimensions), j = 0 … min(k, size); a pair of dimensions
  is (0, log(e^{θ_a} + e^{θ_b}), θ_a + θ_b) in closed form, a parent the log-space convolution of its children,
  U_p[r] = log Σ_j exp(U_a[j] + U_b[r − j]), truncated at degree k; the root gives log Z = U_root[k];
* **outside** (downward): each node holds O[j] = log e_{k−j}(the dimensions outside it); the root's is 0 at j = k;
  a child's is O_a[j] = log Σ_l exp(O_p[j + l] + U_b[l]) (and symmetrically for the right child). The marginals
  are μ_d = exp(θ_d + O_d[1] − log Z) = ∂ log Z / ∂θ_d (Σ_d μ_d = k);
* **the gradient** (``_Tables``): the backward pass of (log Z, μ, H) is one Hessian-vector product of log Z, by a
  forward-mode (tangent) pass over the tree with the softmax weights of both passes: what SIMPLE's estimator (the
  marginals' gradient) and the KL's gradient (∂H/∂θ = −Hess(log Z)·θ) need;
* **exact sampling** (downward): the root holds k ones; a node with r ones gives j of them to its left child with
  probability exp(U_a[j] + U_b[r − j] − U_p[r]) (one uniform per internal node, P − 1 per draw, inverse CDF);
* **entropy** by the chain rule of that sampler: H = Σ over nodes Σ_r P(node holds r) · H(split | r), a sum of
  non-negative terms, so H ≥ 0 and accurate however large log Z and θ·μ are (H = log Z − θ·μ loses its digits
  there); log q(m) = θ·m − log Z;
* mode: the k largest θ_d (the most probable mask);
* KL to a factorised Bernoulli(ρ) prior: every mask of the support has k ones, so
  KL(q ‖ p) = −H − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)], for one ρ = π: −H − k log π − (K − k) log(1 − π);
* ``entropy_within(A)``: the entropy of the gates on a subset A of the dimensions alone (the doubt among z's
  non-zero entries, apart from gates the budget forces open on zeros).

Each level is a handful of batched tensor operations, so a step costs O(log K) kernel launches whatever K
(``experiments/bench_gate.py`` counts them). Accuracy: the tables and their maxima are float64 (``COMPUTE_DTYPE``),
on logits centred per row (c, the midpoint of the row's k-th and (k + 1)-th largest logits; the exactly-k law
ignores a constant added to every θ_d); the softmax weights (numbers in [0, 1]) are in the logits' precision; the
results come back in the logits' dtype: log Z, μ, H and the KL of float32 logits agree with a float64 computation
to about 1e-7 relative (``tests/test_conditional_bernoulli.py``). For k > K/2 the tree is that of the complement
(the K − k closed gates, logits −θ), so a table is never wider than min(k, K − k) + 1.

``rsample`` is SIMPLE's estimator: the exact discrete sample forward, the gradient of the marginals backward
(m + μ − stop_gradient(μ)). It is biased (``tests/test_conditional_bernoulli.py`` measures the bias on a problem
small enough to enumerate); the objective it is used with is an ELBO all the same.

Shapes: logits [..., K] (batch shape [...], event shape [K]); samples [S, ..., K].
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.autograd.function import once_differentiable
from torch.distributions.utils import lazy_property

NEG = -1e30  # log 0 that keeps logsumexp and its gradient finite (exp(NEG − x) underflows to exactly 0)
COMPUTE_DTYPE = torch.float64  # the tables' precision (float32 tables lose the entropy at large K or logits)
LOG_WEIGHT_FLOOR = -87.0  # the smallest log-weight: e^−87 is a normal float32 (below it exp underflows, slowly)
DRAW_FLOOR = 1e-30  # the smallest uniform of a draw: above every share of floored weights (≤ K · e^−87 ≈ 1e−34)


# ---------------------------------------------------------------- the tree (working logits t [..., K])
# Tables (log-coefficients, their maxima) are float64; the softmax weights of each log-sum-exp — numbers in [0, 1],
# whose exponentials are most of the work — are in the logits' precision (float32 in training, float64 for
# float64 logits). Every table is stored with a pad column first (log 0 for the inside tables; for the outside tables
# and the tangents a finite value that only ever meets a weight of exactly 0), so that each level's summands come
# from one small gather of its children's rows with a fixed index (cached per width) and two strided views of it
# added: a handful of batched operations per level, whatever K, and no pass over the summands but the add.
@functools.lru_cache(maxsize=None)
def _root_outside(k: int, at_most: bool, device: torch.device) -> torch.Tensor:
    """[1, k + 2] the root's stored outside table: pad, then O_root[j] = log e_{k−j}(no dimension), 0 at j = k (at
    most k: at every j ≤ k), log 0 elsewhere."""
    j = torch.arange(-1, k + 1, device=device)
    on = ((j >= 0) & (j <= k)) if at_most else (j == k)
    return torch.where(on, 0.0, NEG).to(COMPUTE_DTYPE)[None]


@functools.lru_cache(maxsize=None)
def _draw_offsets(rows: int, width: int, device: torch.device) -> torch.Tensor:
    """[rows] i · width + 1: where degree 0 of row i of a flattened [rows, width] stored table (pad first) sits."""
    return torch.arange(rows, device=device) * width + 1


@functools.lru_cache(maxsize=None)
def _up_index(w_child: int, w: int, device: torch.device) -> torch.Tensor:
    """[2 w_c + w] positions in the children's pair row [pad, U_a (w_c), pad, U_b (w_c)] of U_a reversed (w_c), then
    U_b padded: w_c pads, U_b, w − w_c pads (windows of it of width w + 1 give U_b[r − j] for r = −1 … w − 1)."""
    # built on the device from arange (no host-to-device copy, which would make the host wait for a GPU)
    p = torch.arange(2 * w_child + w, device=device)
    pad_b, q = w_child + 1, p - w_child  # q: the position in U_b padded
    padded_b = torch.where((q >= w_child) & (q < 2 * w_child), pad_b + 1 + q - w_child, pad_b)
    return torch.where(p < w_child, w_child - p, padded_b)


@functools.lru_cache(maxsize=None)
def _down_index(w_parent: int, w_child: int, device: torch.device) -> torch.Tensor:
    """[4 w_c] positions in the row [O_p stored (w_p + 1), pad, U_a (w_c), pad, U_b (w_c)] of the left child's
    sibling U_b, the right child's sibling U_a, then O_p padded: O_pad[m] = O_p[m − 1] for 1 ≤ m ≤ w_p, a pad
    elsewhere (m < 2 w_c)."""
    p, pad = torch.arange(4 * w_child, device=device), w_parent + 1
    m = p - 2 * w_child  # the position in O_p padded
    o_pad = torch.where((m >= 1) & (m <= w_parent), m, pad)
    return torch.where(p < w_child, pad + w_child + 2 + p, torch.where(p < 2 * w_child, pad + 1 + p - w_child, o_pad))


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [..., m] → [..., len(index)] x[..., index] (``gather``: several times faster than indexing on a CPU)."""
    return x.gather(-1, index.expand(x.shape[:-1] + index.shape))


def _view(g: torch.Tensor, sizes: tuple, strides: tuple, offset: int) -> torch.Tensor:
    """A strided view of g [..., m] (contiguous): [..., *sizes] with the last dimensions' ``strides``, from entry
    ``offset`` of each row."""
    return g.as_strided(g.shape[:-1] + sizes, g.stride()[:-1] + strides, g.storage_offset() + offset)


def _lse(terms: torch.Tensor, dim: int, weight_dtype: torch.dtype):
    """log Σ exp along ``dim`` of finite float64 ``terms`` → (result (float64, keepdim), the softmax weights
    p = exp(terms − lse) in ``weight_dtype``, their log-weights terms − max, log of the weights' sum (keepdim)).
    The weights lie in [0, 1] and their sum in [1, m]: the logits' precision is enough for them, the large
    numbers (the terms, their maximum) stay float64. Log-weights below ``LOG_WEIGHT_FLOOR`` are raised to it:
    half the terms are pads (log 0), and an exponential that underflows costs a CPU several times one that does
    not; a weight of e^−87 ≈ 1.6e−38 beside the largest, 1, changes no sum, and the sampler never draws one
    (``Tree.draw``)."""
    top = terms.amax(dim, keepdim=True)
    log_weights = torch.sub(terms, top, out=torch.empty(terms.shape, dtype=weight_dtype, device=terms.device))
    weights = log_weights.clamp_(min=LOG_WEIGHT_FLOOR).exp()
    total = weights.sum(dim, keepdim=True)
    log_total = total.log()
    return top + log_total, weights.div_(total), log_weights, log_total


def _pad(x: torch.Tensor, left: int, right: int, value: float) -> torch.Tensor:
    """x [..., m] with ``left`` and ``right`` entries of ``value`` added on its last dimension (fewer operations
    than ``F.pad``: one fill, one copy)."""
    out = x.new_full(x.shape[:-1] + (left + x.shape[-1] + right,), value)
    out[..., left:left + x.shape[-1]] = x
    return out


def _up_terms(table: torch.Tensor, w: int) -> torch.Tensor:
    """Children's stored tables [..., 2n, w_c + 1] → [..., n, w_c, w + 1]: entry [i, r + 1] = U_a[j] + U_b[r − j]
    with j = w_c − 1 − i, the summands of their parents' U_p[r] = log Σ_j exp(U_a[j] + U_b[r − j]) (r < w), a pad
    where r − j is out of range (all of column 0, r = −1: the parents' pad)."""
    w_child = table.shape[-1] - 1
    pairs = table.view(table.shape[:-2] + (-1, 2 * (w_child + 1)))
    g = _gather(pairs, _up_index(w_child, w, table.device))
    return _view(g, (w_child, w + 1), (1, 0), 0) + _view(g, (w_child, w + 1), (1, 1), w_child)


def _down_terms(parent: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The parents' stored outside tables [..., n, w_p + 1] and the children's stored inside tables [..., 2n,
    w_c + 1] → [..., n, 2, w_c + 1, w_c]: entry [s, x + 1, y] = O_p[x + y] + U_sibling[y], the summands of child
    s's outside table O_s[x] (left child first), a pad where x + y ≥ w_p; row 0 (x = −1) is the children's stored
    first column (finite, and only ever met with a weight of 0)."""
    w_parent, w_child = parent.shape[-1] - 1, table.shape[-1] - 1
    row = torch.cat([parent, table.view(parent.shape[:-1] + (2 * (w_child + 1),))], -1)
    g = _gather(row, _down_index(w_parent, w_child, table.device))
    sizes = (2, w_child + 1, w_child)
    return _view(g, sizes, (w_child, 0, 1), 0) + _view(g, sizes, (0, 1, 1), 2 * w_child)


class Tree:
    """The tables of a batch of working problems, k ≥ 1 ones among t [..., K], over a balanced binary tree of the
    dimensions (padded with dimensions of weight 0 to P = 2^⌈log₂ K⌉ ≥ 2), computed without autograd. Every table
    is stored with a pad column first: column r + 1 holds degree r.

    * ``levels``: inside tables from the pairs of dimensions up, level i [..., P / 2^(i+1), min(k, 2^(i+1)) + 2]
      (float64): a pair's table is (0, log(e^{t_a} + e^{t_b}), t_a + t_b) in closed form, a parent's the log-space
      convolution of its children's; ``log_z`` [...]; the up pass's weights ``up``, [..., n, i, r + 1] p(j | r) =
      exp(U_a[j] + U_b[r − j] − U_p[r]) with j = w_c − 1 − i (the split of a node's r ones between its children:
      for a pair holding one, σ(t_a − t_b) for its left dimension), and each node's split entropy
      h[r] = −Σ_j p(j | r) log p(j | r);
    * ``outside()``: the down pass: μ [..., K] = exp(t_d + O_d[1] − log Z) and the entropy H [...] = Σ over nodes
      Σ_r P(node holds r) · h[r] (the chain rule of the top-down sampler: a sum of non-negative terms, so H ≥ 0
      and accurate however large log Z and θ·μ are);
    * ``tangent(v)``: the derivative of μ along v, Hess(log Z) · v (forward mode through both passes, with their
      weights): the backward pass of ``_Tables``;
    * ``draw(u)``: exact draws, top-down, with the up pass's weights.
    """

    def __init__(self, t: torch.Tensor, k: int, weight_dtype: torch.dtype, at_most: bool = False):
        self.k, self.num_dims, self.weight_dtype, self.at_most = k, t.shape[-1], weight_dtype, at_most
        pad = max(2, 1 << (t.shape[-1] - 1).bit_length()) - t.shape[-1]
        t = _pad(t.to(COMPUTE_DTYPE), 0, pad, NEG) if pad else t.to(COMPUTE_DTYPE)
        self.left, self.right = t[..., 0::2], t[..., 1::2]  # [..., P/2]: a padded dimension (NEG) is never chosen
        either = torch.logaddexp(self.left, self.right)
        first, second = torch.sigmoid(self.left - self.right), torch.sigmoid(self.right - self.left)
        self.first = first.to(weight_dtype)  # p(the left dimension | the pair holds one)
        split = (-(torch.xlogy(first, first) + torch.xlogy(second, second))).to(weight_dtype)  # like every split
        table = either.new_full(either.shape + (min(k, 2) + 2,), NEG)  # (pad | 0, log e_1, log e_2)
        table[..., 1], table[..., 2] = 0.0, either
        if k > 1:
            table[..., 3] = self.left + self.right
        self.levels, self.up, self.splits, size = [table], [], [split], 2
        while table.shape[-2] > 1:
            size *= 2
            table, weights, log_weights, log_total = _lse(_up_terms(table, min(k, size) + 1), -2, weight_dtype)
            split = log_total - (weights * log_weights).sum(-2, keepdim=True)
            table = table.view(table.shape[:-2] + table.shape[-1:])
            self.levels.append(table)
            self.up.append(weights)
            self.splits.append(split.view(split.shape[:-3] + (-1,)))  # [..., n · (w + 1)]
        # exactly k: log Z = U_root[k]; at most k: log Σ_{c ≤ k} e_c (the root's law of its count P(c) ∝ e_c)
        self.log_z = torch.logsumexp(table[..., 0, 1:], -1) if at_most else table[..., 0, k + 1]

    def outside(self, root: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(μ [..., K], H [...]) from the down pass (its weights kept for ``tangent``). ``root``: instead of exactly
        k ones, a law over the root's count, log P(c) [..., k + 1] (log 0 as NEG): then μ and H are those of the
        mixture over c of the exactly-c laws, H given c (the count's own entropy left out)."""
        # outside tables are kept less log Z, so that U + O is the log-probability that a node holds r ones
        count_entropy = 0.0
        if root is None:  # at most k: O_root[c] = 0 for every c ≤ k, and the count's entropy joins H
            out = _root_outside(self.k, self.at_most, self.log_z.device) - self.log_z.view(self.log_z.shape + (1, 1))
            if self.at_most:
                log_p = self.levels[-1][..., 0, 1:] - self.log_z.unsqueeze(-1)
                count_entropy = -(log_p.exp() * torch.where(log_p > NEG / 2, log_p, 0.0)).sum(-1)
        else:  # O_root[c] = log P(c) − U_root[c], log 0 where c is impossible
            top, root = self.levels[-1][..., 1:], root.unsqueeze(-2)  # [..., 1, k + 1]
            out = _pad(torch.where((root > NEG / 2) & (top > NEG / 2), root - top, NEG), 1, 0, NEG)
        self.down, log_p, splits = [], [], []
        for level in range(len(self.levels) - 1, 0, -1):
            parent, table = self.levels[level], self.levels[level - 1]
            log_p.append((parent + out).flatten(-2))  # log P(node holds r)
            splits.append(self.splits[level])
            out, weights, _, _ = _lse(_down_terms(out, table), -1, self.weight_dtype)
            self.down.append(weights)
            out = out.view(out.shape[:-4] + (-1, table.shape[-1]))
        # the pairs: a dimension's outside is O[1] + (O[2] + its partner) when the pair may hold two
        one = out[..., 2]
        log_p.append(self.levels[0][..., 2] + one)
        splits.append(self.splits[0])
        if out.shape[-1] > 3:
            both = out[..., 3]
            self.with_partner = (torch.sigmoid(both + self.right - one), torch.sigmoid(both + self.left - one))
            left_out = torch.logaddexp(one, both + self.right)
            right_out = torch.logaddexp(one, both + self.left)
        else:
            left_out = right_out = one
        mu = torch.stack([self.left + left_out, self.right + right_out], -1).flatten(-2).exp()
        entropy = (torch.cat(log_p, -1).exp() * torch.cat(splits, -1)).sum(-1)  # Σ_nodes Σ_r P(r) · h[r]
        return mu[..., :self.num_dims], (entropy + count_entropy).clamp(min=0)

    def tangent(self, v: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """[..., K] v, μ (the weights' dtype) → [..., K] dμ = Σ_e ∂μ/∂t_e v_e (each log-sum-exp's tangent is the
        softmax-weighted sum of its terms' tangents), in the weights' precision."""
        v = v.to(self.weight_dtype)
        pad = 2 * self.left.shape[-1] - v.shape[-1]
        padded = _pad(v, 0, pad, 0.0) if pad else v
        v_left, v_right = padded[..., 0::2], padded[..., 1::2]
        either = v_right + self.first * (v_left - v_right)
        table = either.new_zeros(either.shape + (self.levels[0].shape[-1],))  # (pad | 0, d log e_1, d log e_2)
        table[..., 2] = either
        if table.shape[-1] > 3:
            table[..., 3] = v_left + v_right
        tangents = [table]
        for weights, parent in zip(self.up, self.levels[1:]):
            table = (weights * _up_terms(table, parent.shape[-1] - 1)).sum(-2)
            tangents.append(table)
        if self.at_most:  # d log Σ_c e_c = Σ_c P(c) dU_root[c]
            p = (self.levels[-1][..., 0, 1:] - self.log_z.unsqueeze(-1)).exp().to(self.weight_dtype)
            d_log_z = (p * table[..., 0, 1:]).sum(-1, keepdim=True)
        else:
            d_log_z = table[..., 0, self.k + 1:self.k + 2]
        out = torch.zeros_like(tangents[-1])
        for weights, table in zip(self.down, reversed(tangents[:-1])):
            out = (weights * _down_terms(out, table)).sum(-1).flatten(-3, -2)
        one = out[..., 2]
        if out.shape[-1] > 3:
            both = out[..., 3]
            to_left, to_right = (w.to(self.weight_dtype) for w in self.with_partner)
            left_out = one + to_left * (both + v_right - one)
            right_out = one + to_right * (both + v_left - one)
        else:
            left_out = right_out = one
        d_out = torch.stack([left_out, right_out], -1).flatten(-2)[..., :self.num_dims]
        return mu * (v + d_out - d_log_z)

    def draw(self, u: torch.Tensor) -> torch.Tensor:
        """Exact draws for uniforms u [S, ..., P − 1] (one per internal node: the root's, then level by level; at most
        k: P, the first drawing the root's count from P(c) ∝ e_c) → counts [S, ..., K] in {0, 1} with exactly
        (at most) k ones: a node holding r ones gives its left child j of them with probability p(j | r), the up
        pass's weights (inverse CDF)."""
        # in the weights' precision, below 1 (a float64 uniform may round up to 1.0 in float32): u·total then stays
        # below the cdf's last value, so the share drawn is always a possible one; and above DRAW_FLOOR, the most
        # that the weights of impossible shares (floored at e^−87, not 0) add before the first possible one
        u = u.to(self.weight_dtype).clamp_(min=DRAW_FLOOR, max=1 - torch.finfo(self.weight_dtype).eps / 2)
        u = u.unsqueeze(-1)
        if self.at_most:
            cdf = (self.levels[-1][..., 0, 1:] - self.log_z.unsqueeze(-1)).exp().to(u.dtype).cumsum(-1)
            cdf = cdf.expand(u.shape[:-2] + cdf.shape[-1:]).contiguous()
            counts = torch.searchsorted(cdf, u[..., 0, :] * cdf[..., -1:], right=True).unsqueeze(-1)
            u = u[..., 1:, :]
        else:
            counts = torch.full(u.shape[:-2] + (1, 1), self.k, dtype=torch.long, device=u.device)  # [S, ..., n, 1]
        start = 0
        for weights in reversed(self.up):  # weights [..., n, w_c, w_p + 1]: [i, r + 1], j = w_c − 1 − i
            n, w_child, w_parent = weights.shape[-3:]
            flat = weights.flatten(-2)
            if counts.dim() > flat.dim():  # several draws: [S, ..., n, w_c · (w_p + 1)]
                flat = flat.expand(counts.shape[:-1] + flat.shape[-1:])
            cdf = flat.gather(-1, counts + _draw_offsets(w_child, w_parent, u.device)).cumsum(-1)
            # the number of cdf entries ≤ u·total is a possible share: the cdf is 0 before the first possible one
            # and flat (= total) from the last one on
            drawn = torch.searchsorted(cdf, u[..., start:start + n, :] * cdf[..., -1:], right=True)
            left = (w_child - 1) - drawn
            counts = torch.cat([left, counts - left], -1).view(counts.shape[:-2] + (2 * n, 1))
            start += n
        # a pair holding two: both; one: the left with probability σ(t_a − t_b); none: neither
        counts = counts[..., 0]
        left = torch.where(u[..., start:, 0] < self.first, counts.clamp(max=1), (counts - 1).clamp(min=0))
        return torch.stack([left, counts - left], -1).flatten(-2)[..., :self.num_dims]


class _Tables(torch.autograd.Function):
    """(logits θ [..., K], the working problem's logits t = ±(θ − c) [..., K] (float64, no gradient; − for the
    complement), complement, k, the weights' dtype, holder) → (log Z [...], μ [..., K], H [...]) (float64) of the
    working problem, with the exact gradient in θ:
    backward(g, G, g_H) = ±[Hess(log Z) · (G − g_H t) + g μ] (∂H/∂t = −Hess(log Z) t, since H = log Z − t·μ), the
    Hessian-vector product by a tangent pass over the tree (what SIMPLE's estimator and the KL need), in the
    weights' precision. The ``Tree`` is left in ``holder["tree"]`` for the sampler."""

    @staticmethod
    def forward(ctx, logits, t, complement, k, weight_dtype, holder, at_most=False):
        ctx.set_materialize_grads(False)  # an output nobody used (log Z, mostly) costs no zeros
        tree = Tree(t, k, weight_dtype, at_most)
        mu, entropy = tree.outside()
        holder["tree"] = tree
        ctx.tree, ctx.t, ctx.complement = tree, t, complement
        ctx.save_for_backward(mu.to(weight_dtype))
        return tree.log_z, mu, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, g_log_z, g_mu, g_entropy):
        (mu,) = ctx.saved_tensors
        v = g_mu if g_mu is not None else torch.zeros_like(ctx.t)
        if g_entropy is not None:
            v = v - g_entropy.unsqueeze(-1) * ctx.t
        grad = ctx.tree.tangent(v, mu)
        if g_log_z is not None:
            grad = grad + g_log_z.unsqueeze(-1) * mu
        return -grad if ctx.complement else grad, None, None, None, None, None, None


# ---------------------------------------------------------------- the distribution
class ConditionalBernoulli(dist.TorchDistribution):
    """Masks m ∈ {0,1}^K with exactly ``k`` ones, q(m) ∝ exp(logits · m) (see the module docstring); with
    ``at_most=True``, with at most k ones: q(m) ∝ exp(θ·m) 1[Σ m ≤ k], Z = Σ_{c ≤ k} e_c(exp θ), the same tables
    with the root's count drawn from P(c) ∝ e_c (its entropy H(c) part of H; no complement, no centring: a
    constant added to every θ changes this law)."""

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = True

    def __init__(self, logits: torch.Tensor, k: int, validate_args=None, at_most: bool = False):
        K = logits.shape[-1]
        if isinstance(k, bool) or int(k) != k or not 0 <= k <= K:
            raise ValueError(f"ConditionalBernoulli: k must be an integer in [0, {K}] (the number of dimensions), "
                             f"got {k}")
        self.logits, self.k, self.at_most = logits, int(k), bool(at_most)
        validate = torch.distributions.Distribution._validate_args if validate_args is None else validate_args
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = validate
        if validate:  # reads the logits back to the host: only with validation on (run_svi turns it off)
            bad = ~torch.isfinite(logits)
            if bad.any():
                where = tuple(int(i) for i in bad.nonzero()[0])
                raise ValueError(f"ConditionalBernoulli: logits must be finite, got {float(logits[where])} at "
                                 f"index {list(where)}")

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        if batch_shape == self.batch_shape and _instance is None:
            return self  # (Pyro's plates expand to the shape a site already has): its tables stay shared
        new = self._get_checked_instance(ConditionalBernoulli, _instance)
        new.logits, new.k = self.logits.expand(batch_shape + self.event_shape), self.k
        new.at_most = self.at_most
        super(ConditionalBernoulli, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ---- the working problem: k' ones among the centred logits (the complement's when k > K/2), padded to P
    @property
    def _complement(self) -> bool:
        return 2 * self.k > self.logits.shape[-1] and not self.at_most

    @property
    def _working_k(self) -> int:
        return self.logits.shape[-1] - self.k if self._complement else self.k

    @property
    def num_uniforms(self) -> int:
        """Uniforms one draw takes (``from_uniforms``): one per internal node of the tree, P − 1 (P the number of
        dimensions rounded up to a power of two, at least 2)."""
        return max(2, 1 << (self.logits.shape[-1] - 1).bit_length()) - (0 if self.at_most else 1)

    @lazy_property
    def _logits64(self) -> torch.Tensor:
        """[..., K] the logits in the compute dtype, without gradient."""
        return self.logits.detach().to(COMPUTE_DTYPE)

    @lazy_property
    def _shift(self) -> torch.Tensor:
        """[..., 1] c: the midpoint of each row's k-th and (k + 1)-th largest logits (no gradient: q ignores it),
        in the compute dtype."""
        K = self.logits.shape[-1]
        with torch.no_grad():
            logits = self._logits64
            if self.at_most:
                return torch.zeros_like(logits[..., :1])
            if self.k in (0, K):
                return logits.mean(-1, keepdim=True)
            top = torch.topk(logits, self.k + 1, dim=-1).values
            return 0.5 * (top[..., self.k - 1:self.k] + top[..., self.k:])

    @lazy_property
    def _working(self) -> torch.Tensor:
        """[..., K] the working problem's logits: θ − c, or c − θ for the complement (float64), differentiable: the
        complement's log Z takes its sum."""
        centred = self.logits.to(COMPUTE_DTYPE) - self._shift
        return -centred if self._complement else centred

    @lazy_property
    def _working_data(self) -> torch.Tensor:
        """[..., K] the working problem's logits without gradient (float64): what the tables are built from."""
        centred = self._logits64 - self._shift
        return centred.neg_() if self._complement else centred

    @property
    def _weight_dtype(self) -> torch.dtype:
        """The precision of the softmax weights: float64 for float64 logits, else float32."""
        return torch.float64 if self.logits.dtype == torch.float64 else torch.float32

    @lazy_property
    def _solved(self):
        """(log Z [...], μ [..., K], H [...], the tree) of the working problem (float64), differentiable."""
        if not self._working_k:
            zero = self.logits.new_zeros(self.batch_shape, dtype=COMPUTE_DTYPE)
            return zero, torch.zeros_like(self.logits, dtype=COMPUTE_DTYPE), zero, None
        holder = {}
        log_z, mu, entropy = _Tables.apply(self.logits, self._working_data, self._complement, self._working_k,
                                           self._weight_dtype, holder, self.at_most)
        return log_z, mu, entropy, holder["tree"]

    @property
    def _tree(self) -> Tree:
        """The working problem's tables: those of ``_solved`` once computed, else the inside tables alone (a draw
        needs no marginals)."""
        if "_solved" in self.__dict__:
            return self._solved[3]
        if "_inside" not in self.__dict__:
            self._inside = Tree(self._working_data, self._working_k, self._weight_dtype, self.at_most)
        return self._inside

    @property
    def _working_log_z(self) -> torch.Tensor:
        return self._solved[0]

    @property
    def _working_marginals(self) -> torch.Tensor:
        return self._solved[1]

    @property
    def _entropy(self) -> torch.Tensor:
        return self._solved[2]

    # ---- the law's quantities, in the logits' dtype
    @lazy_property
    def _centred_log_z(self) -> torch.Tensor:
        """[...] log e_k(exp(θ − c)) (compute dtype): e_k(x) = Π x · e_{K−k}(1/x) for the complement."""
        log_z = self._working_log_z
        return log_z - self._working.sum(-1) if self._complement else log_z

    @lazy_property
    def log_normalizer(self) -> torch.Tensor:
        """[...] log Z = log e_k(exp θ)."""
        return (self._centred_log_z + self.k * self._shift[..., 0]).to(self.logits.dtype)

    @lazy_property
    def marginals(self) -> torch.Tensor:
        """[..., K] μ_d = q(m_d = 1), differentiable in the logits; Σ_d μ_d = k."""
        mu = self._working_marginals
        return (1 - mu if self._complement else mu).to(self.logits.dtype)

    @property
    def mean(self) -> torch.Tensor:
        return self.marginals

    @property
    def mode(self) -> torch.Tensor:
        """[..., K] the most probable mask: ones on the k largest logits (ties by position); at most k: on those of
        them that are positive."""
        top = torch.topk(self.logits, self.k, dim=-1)
        on = (top.values > 0).to(self.logits.dtype) if self.at_most else 1.0
        return torch.zeros_like(self.logits).scatter_(-1, top.indices, on)

    def entropy(self) -> torch.Tensor:
        """[...] H = log Z − θ·μ (nats), ≥ 0."""
        return self._entropy.to(self.logits.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """θ·m − log Z for masks with k ones (at most k), −inf otherwise."""
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(COMPUTE_DTYPE)
        inside_support = value.sum(-1) < self.k + 0.5 if self.at_most else (value.sum(-1) - self.k).abs() < 0.5
        centred = self.logits.to(COMPUTE_DTYPE) - self._shift
        lp = (centred * value).sum(-1) - self._centred_log_z
        return torch.where(inside_support, lp, torch.full_like(lp, -math.inf)).to(self.logits.dtype)

    def kl_to_bernoulli(self, probs: torch.Tensor) -> torch.Tensor:
        """[...] KL(q ‖ Π_d Bernoulli(ρ_d)) = −H − Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)], ρ ``probs`` [] or
        [K] or [..., K] in (0, 1)."""
        probs = torch.as_tensor(probs, device=self.logits.device).to(COMPUTE_DTYPE)
        mu = self._working_marginals
        if self._complement:
            mu = 1 - mu
        log_off = (-probs).log1p()  # Σ_d [μ_d log ρ_d + (1 − μ_d) log(1 − ρ_d)] = μ·logit(ρ) + Σ_d log(1 − ρ_d)
        closed = log_off.sum(-1) if log_off.dim() else self.logits.shape[-1] * log_off
        cross = (mu * (probs.log() - log_off)).sum(-1) + closed
        return (-self._entropy - cross).to(self.logits.dtype)

    def entropy_within(self, active: torch.Tensor) -> torch.Tensor:
        """[...] the entropy of the gates on the dimensions ``active`` [..., K] (bool) alone, H(m_A) ≤ H: the law of
        m_A mixes over its count c, P(c) ∝ e_c(A) e_{k−c}(Ā), the exactly-c laws on A, so H(m_A) = H(c) + Σ_c P(c)
        H(m_A | c), from one tree over A (inside, then outside from the law of c). H − H(m_A) = H(m_Ā | m_A) is the
        entropy of the gates on the other dimensions: for active = z's non-zero entries, gates the budget forces
        open on zeros, which change no feature."""
        K, k = self.logits.shape[-1], self.k
        if k == 0 or (k == K and not self.at_most):
            return torch.zeros(self.batch_shape, dtype=self.logits.dtype, device=self.logits.device)
        with torch.no_grad():
            centred = self.logits.to(COMPUTE_DTYPE) - self._shift
            inside = Tree(centred.masked_fill(~active, NEG), k, self._weight_dtype)
            outside_ = Tree(centred.masked_fill(active, NEG), k, self._weight_dtype)
            rest = outside_.levels[-1][..., 0, 1:]
            if self.at_most:  # P(c) ∝ e_c(A) Σ_{j ≤ k − c} e_j(Ā)
                rest = torch.logcumsumexp(rest, -1)
            log_w = inside.levels[-1][..., 0, 1:] + rest.flip(-1)  # e_c(A) e_{k−c}(Ā)
            log_w = torch.where(log_w > NEG / 2, log_w, NEG)
            log_p = torch.where(log_w > NEG / 2, log_w - torch.logsumexp(log_w, -1, keepdim=True), NEG)
            count_entropy = -(log_p.exp() * torch.where(log_w > NEG / 2, log_p, 0.0)).sum(-1)
            return (count_entropy + inside.outside(log_p)[1]).to(self.logits.dtype)

    # ---- sampling
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape + (self.num_uniforms,)
            return self.from_uniforms(torch.rand(shape, dtype=self._weight_dtype, device=self.logits.device))

    def from_uniforms(self, u: torch.Tensor) -> torch.Tensor:
        """The exact draw for uniforms u [S, ..., ``num_uniforms``] in [0, 1) (one per internal node of the tree):
        masks [S, ..., K] in the logits' dtype."""
        if u.shape[-1] != self.num_uniforms:
            raise ValueError(f"ConditionalBernoulli.from_uniforms: expected {self.num_uniforms} uniforms per draw "
                             f"(one per internal node), got {u.shape[-1]}")
        K = self.logits.shape[-1]
        with torch.no_grad():
            if not self._working_k:
                ones = torch.zeros(u.shape[:-1] + (K,), dtype=self.logits.dtype, device=self.logits.device)
            else:
                ones = self._tree.draw(u)[..., :K].to(self.logits.dtype)
            return 1 - ones if self._complement else ones

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """SIMPLE: the exact sample forward, the marginals' gradient backward (m + μ − sg(μ))."""
        mu = self.marginals  # first: the draw then reuses its tables
        m = self.sample(sample_shape)
        return m + (mu - mu.detach())
