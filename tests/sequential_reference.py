"""The exactly-k law by the sequential recursion over the dimensions (the library's algorithm before the tree),
kept here only as an independent reference for the tests: the table F[i, j] = log e_j(exp θ_1, …, exp θ_i) filled
one dimension at a time, F[i, j] = logaddexp(F[i − 1, j], θ_i + F[i − 1, j − 1]); log Z = F[K, k]; the marginals
from the prefix table and the same table over the reversed dimensions. O(K·k), K steps; float64 in the tests."""
import torch

NEG = -1e30


def log_esp_table(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits [..., K] → [K + 1, ..., k + 1] with entry [i, ..., j] = log e_j(exp θ_1, …, exp θ_i)."""
    row = logits.new_full(logits.shape[:-1] + (k + 1,), NEG)
    row[..., 0] = 0.0
    rows = [row]
    pad = logits.new_full(logits.shape[:-1] + (1,), NEG)
    for i in range(logits.shape[-1]):
        row = torch.logaddexp(row, torch.cat([pad, row[..., :-1]], -1) + logits[..., i:i + 1])
        rows.append(row)
    return torch.stack(rows)


def log_normalizer(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[...] log e_k(exp θ)."""
    return log_esp_table(logits, k)[-1, ..., k]


def marginals(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[..., K] μ_d = exp(θ_d + log Σ_j e_j(before d) e_{k−1−j}(after d) − log Z)."""
    K = logits.shape[-1]
    prefix = log_esp_table(logits, k)
    suffix = log_esp_table(logits.flip(-1), k)[:K].flip(0)
    pairs = prefix[:K, ..., :k] + suffix[..., :k].flip(-1)
    log_mu = torch.logsumexp(pairs, -1) + logits.movedim(-1, 0) - prefix[K, ..., k]
    return log_mu.exp().movedim(0, -1)
