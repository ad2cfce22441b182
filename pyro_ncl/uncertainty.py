"""How sure is the gate? Per-image uncertainty scores, and the metrics that say whether they detect anything.

Everywhere a higher score means *more uncertain*: the images a score flags first are those with the highest score.

Detection metrics, for ``scores`` [N] and ``positives`` [N] (bool: the images to detect — the misclassified test
images, or the out-of-distribution ones), by scikit-learn, so that tied scores are handled as it does (a threshold
flags every image at or above it; AUROC counts a tied positive–negative pair as ½):
    auroc(scores, positives)              area under the ROC curve
    aupr(scores, positives)               average precision (the positives as the positive class)
    fpr_at_tpr(scores, positives, 0.95)   the smallest false-positive rate of a threshold that flags ≥ 95% of the
                                          positives
    roc(scores, positives)                (fpr, tpr) over every distinct threshold
    risk_coverage(scores, errors)         selective classification: coverage, risk, AURC (see its docstring)

Scores (``SCORES``: name → ``Score``, each a function of one ``ScoreInputs``; kind "gate" reads the posterior
q(m | x) and exists for gated runs only, kind "deterministic" reads the features alone and exists for every run):
    entropy               H(q(m | x)): Σ_d H(Bernoulli(μ_d)) for a factorised posterior, the exact entropy of a
                          structured one (exact_k); ``guide.entropy``
    kl_prior              KL(q(m | x) ‖ p(m)) per image, ``guide.closed_form_kl`` at the prior's probabilities
    view_disagreement     E|m¹ − m²|₁ = Σ_d [μ¹_d (1 − μ²_d) + μ²_d (1 − μ¹_d)] for independent draws from the
                          posteriors of two augmented views (exact for any posterior: only marginals enter)
    knn_disagreement      1 − (share of the modal label) of the kNN classifier's labels over S mask draws
                          m_s ~ q(m | x), features normalize(z ⊙ m_s) against the run's training features
    neighbour_gate_agreement  1 − mean over the image's k nearest training neighbours j of the soft Dice overlap
                          2 Σ_d μ_d g_jd / (Σ_d μ_d + Σ_d g_jd) of its posterior marginals μ with their test-time
                          gates g_j (a "joined" score: the posterior against the neighbours' gates)
    kth_distance          1 − cos(x, its k-th nearest training neighbour), k the kNN evaluation's (``--knn-k``)
    topk_margin           −(v_(k) − v_(k+1)), v the normalised z sorted (for the top-k activation: z before the
                          cut), k the budget of the gate or the activation, else ``default_topk(K)``
    vote_share            1 − max_c V_c / Σ_c V_c, V the weighted kNN votes (k neighbours, weights exp(cos/0.07)):
                          the classifier of ``probes.knn_accuracy``
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pyro_ncl.budget import default_topk
from pyro_ncl.ops import safe_normalize
from pyro_ncl.probes import BLOCK, knn_votes, neighbours
from pyro_ncl.registry import Registry


# ---------------------------------------------------------------------------------------------------- metrics


def _check(scores, positives) -> Tuple[np.ndarray, np.ndarray]:
    """(float64 scores [N], bool positives [N]) as NumPy arrays; one-line ValueErrors for other shapes, non-finite
    scores, or a task with no positive or no negative (its ROC curve is undefined)."""
    s = np.asarray(scores.cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    p = np.asarray(positives.cpu() if torch.is_tensor(positives) else positives).astype(bool)
    if s.ndim != 1 or s.shape != p.shape:
        raise ValueError(f"scores and positives must be 1-D of one length, got {s.shape} and {p.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if p.all() or not p.any():
        raise ValueError(f"need positives and negatives, got {int(p.sum())} positives among {p.size}")
    return s, p


def auroc(scores, positives) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), in [0, 1] (0.5: no better than chance)."""
    s, p = _check(scores, positives)
    return float(roc_auc_score(p, s))


def aupr(scores, positives) -> float:
    """Average precision Σ_n (R_n − R_{n−1}) P_n over the distinct thresholds (scikit-learn's), positives as the
    positive class; chance level is the share of positives."""
    s, p = _check(scores, positives)
    return float(average_precision_score(p, s))


def roc(scores, positives) -> Tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) [T] at every distinct threshold t, flagging the images with score ≥ t, from (0, 0) to (1, 1)."""
    s, p = _check(scores, positives)
    fpr, tpr, _ = roc_curve(p, s, drop_intermediate=False)
    return fpr, tpr


def fpr_at_tpr(scores, positives, tpr: float = 0.95) -> float:
    """The false-positive rate of the highest threshold that flags at least ``tpr`` of the positives (tied scores
    are flagged together)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    fpr, rates = roc(scores, positives)
    return float(fpr[np.argmax(rates >= tpr)])  # fpr and tpr both rise along the thresholds


def risk_coverage(scores, errors) -> Dict[str, object]:
    """Selective classification: set the most uncertain images aside, keep the rest.

    Sort the N images by increasing ``scores`` (most certain first). At coverage i/N (i = 1 … N) the risk is the
    number of ``errors`` among the i most certain images over i; AURC = (1/N) Σ_{i=1..N} risk_i (lower is better;
    the risk at full coverage is the error rate). Ties: a block of tied scores is taken in a uniformly random order
    and the risk is its expectation — inside a block the errors count at the block's error rate per image — so the
    curve does not depend on the order of the input.

    Returns {"coverage": [N] i/N, "risk": [N], "aurc": float}. ``errors`` [N] bool (any mix, all correct included).
    """
    s = np.asarray(scores.cpu() if torch.is_tensor(scores) else scores, dtype=np.float64)
    e = np.asarray(errors.cpu() if torch.is_tensor(errors) else errors).astype(np.float64)
    if s.ndim != 1 or s.shape != e.shape or s.size == 0:
        raise ValueError(f"scores and errors must be 1-D of one non-zero length, got {s.shape} and {e.shape}")
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first position of each tied block
    sizes = np.diff(np.r_[starts, s.size])
    block_errors = np.add.reduceat(e, starts)
    before = np.r_[0.0, np.cumsum(block_errors)[:-1]]  # errors before each block
    block = np.repeat(np.arange(starts.size), sizes)
    i = np.arange(1, s.size + 1)
    inside = i - starts[block]  # images of its block taken so far, 1 … size
    cum_errors = before[block] + inside * block_errors[block] / sizes[block]
    risk = cum_errors / i
    return {"coverage": i / s.size, "risk": risk, "aurc": float(risk.mean())}


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass
class Bank:
    """The run's training split as the kNN classifier sees it: ``features`` [M, K] (the run's evaluated
    features), ``y`` [M], and for gated runs ``gate`` [M, K] (the test-time hard gate)."""
    features: torch.Tensor
    y: torch.Tensor
    gate: Optional[torch.Tensor] = None


@dataclass
class ScoreInputs:
    """What the scores read, for N images.

    ``out``: ``system.features`` of the images (h [N, F], z [N, K] normalised, features [N, K]; gated runs also
    gate, probs (μ) [N, K] and entropy [N]) plus, where computed, ``views`` [2, N, K] (μ of two augmented views of
    each image) and ``ranked`` [N, K] (the normalised z before a top-k activation's cut); ``bank`` the training
    split; ``guide`` the run's guide (None for ungated runs); ``knn_k``, ``num_classes``; ``budget`` (k of
    ``topk_margin``); ``samples`` S and ``seed`` (the mask draws of ``knn_disagreement``)."""
    out: Dict[str, torch.Tensor]
    bank: Bank
    num_classes: int
    knn_k: int = 20
    guide: Optional[torch.nn.Module] = None
    budget: Optional[int] = None
    samples: int = 16
    seed: int = 0
    _cache: Dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def gated(self) -> bool:
        return self.guide is not None and "probs" in self.out

    def knn(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cosine similarities [N, k], indices [N, k]) of the images' k nearest training images (computed once)."""
        if "knn" not in self._cache:
            self._cache["knn"] = neighbours(self.out["features"], self.bank.features, self.knn_k)
        return self._cache["knn"]

    def votes(self) -> torch.Tensor:
        """[N, C] the weighted kNN votes of the run's features."""
        return knn_votes(*self.knn(), self.bank.y, self.num_classes)

    def predictions(self) -> torch.Tensor:
        """[N] the kNN classifier's labels (``probes.knn_accuracy``'s)."""
        return self.votes().argmax(1)


def image_outputs(system, images: torch.Tensor, normalise: Callable, batch_size: int, device,
                  augment: Optional[Callable] = None, seed: int = 0) -> Dict[str, torch.Tensor]:
    """What the scores read of images [N, C, H, W] (uint8, or float in [0, 1]), on the CPU: ``system.features`` of
    the normalised images (network in eval mode: BatchNorm statistics untouched), plus for gated systems with an
    ``augment`` (the dataset's training augmentation, ``BatchAugment``) ``views`` [2, N, K], the posterior marginals
    of two augmented views of each image (drawn as in training, from a CPU generator seeded with ``seed``), and for
    the top-k activation ``ranked`` [N, K], the normalised z before its cut (ReLU of the projector)."""
    from pyro_ncl.data.augment import draw
    from pyro_ncl.evaluation import eval_mode
    generator = torch.Generator().manual_seed(seed)
    ranked = getattr(system.encoder, "non_negativity", None) == "topk"
    parts: Dict[str, list] = {}
    with eval_mode(system):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            out = system.features(normalise(x))
            if ranked:
                out["ranked"] = safe_normalize(nnf.relu(system.encoder.projector(out["h"])))
            if system.gated and augment is not None:
                views = []
                for params in draw(2, x.shape[0], generator, device):
                    h, z = system.encoder(normalise(augment(x, params=params)))
                    views.append(system.guide.probs(h.float(), safe_normalize(z.float())))
                out["views"] = torch.stack(views, 1)  # [b, 2, K], concatenated along the images below
            for key, value in out.items():
                parts.setdefault(key, []).append(value.cpu())
    out = {key: torch.cat(values) for key, values in parts.items()}
    if "views" in out:
        out["views"] = out["views"].transpose(0, 1).contiguous()  # [2, N, K]
    return out


# ---------------------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Score:
    kind: str  # "gate" or "deterministic"
    fn: Callable[[ScoreInputs], Optional[torch.Tensor]]
    definition: str


SCORES: Registry = Registry("uncertainty score")
KINDS = ("gate", "deterministic")


def register(name: str, kind: str, definition: str):
    """Decorator: ``fn(inputs) → [N] float64 scores`` (higher = more uncertain), or None where the run has no such
    score (e.g. no closed-form KL)."""
    if kind not in KINDS:
        raise ValueError(f"score kind must be one of {KINDS}, got {kind!r}")

    def add(fn):
        SCORES.register(name)(Score(kind, fn, definition))
        return fn
    return add


def _chunks(n: int, size: int):
    """Slices of 0 … n − 1 of ``size`` rows (at least 1)."""
    size = max(1, size)
    return [slice(start, start + size) for start in range(0, n, size)]


def prior_probs(prior, num_dims: int, device) -> torch.Tensor:
    """[K] the prior's open probabilities: π, or for ``beta_bernoulli`` the posterior mean of its rates."""
    if hasattr(prior, "posterior_rates"):
        return prior.posterior_rates().mean.to(device)
    return prior.gate_dist(None, num_dims, device).probs


@register("entropy", "gate", "H(q(m | x)): Σ_d H(Bernoulli(μ_d)) for a factorised posterior, the exact entropy "
          "of a structured one (exact_k)")
def entropy_score(inputs: ScoreInputs) -> torch.Tensor:
    return inputs.out["entropy"].double()


@register("kl_prior", "gate", "KL(q(m | x) ‖ p(m)) per image (the ELBO's gate term, closed form)")
def kl_prior_score(inputs: ScoreInputs) -> Optional[torch.Tensor]:
    guide = inputs.guide
    if not (guide.always_closed_form_kl or guide.prior.closed_form_kl):
        return None
    h, z = inputs.out["h"], inputs.out["z"]
    probs = prior_probs(guide.prior, z.shape[1], z.device)
    with torch.no_grad():
        return torch.cat([guide.closed_form_kl(guide.view_logits(h[rows], z[rows]), probs)
                          for rows in _chunks(z.shape[0], 4096)]).double()


def expected_hamming(mu1: torch.Tensor, mu2: torch.Tensor) -> torch.Tensor:
    """[N] E|m¹ − m²|₁ = Σ_d [μ¹_d (1 − μ²_d) + μ²_d (1 − μ¹_d)] for independent m¹ ~ q¹, m² ~ q² with marginals
    μ¹, μ² [N, K] (exact for any joint law of each: the draws are independent, and each term needs its marginal)."""
    mu1, mu2 = mu1.double(), mu2.double()
    return (mu1 * (1 - mu2) + mu2 * (1 - mu1)).sum(-1)


@register("view_disagreement", "gate", "E|m¹ − m²|₁ = Σ_d [μ¹_d(1 − μ²_d) + μ²_d(1 − μ¹_d)]: independent mask "
          "draws of two augmented views")
def view_disagreement_score(inputs: ScoreInputs) -> Optional[torch.Tensor]:
    views = inputs.out.get("views")
    return None if views is None else expected_hamming(views[0], views[1])


def modal_share(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels [S, N] → [N] the share of the S labels that are the most frequent one."""
    counts = nnf.one_hot(labels.long(), num_classes).sum(0)  # [N, C]
    return counts.max(1).values.double() / labels.shape[0]


def masked_knn_labels(z: torch.Tensor, masks: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    """z [b, K], masks [S, b, K] → [S, b] the kNN classifier's labels of the features normalize(z ⊙ m_s) against
    the training bank. A draw that repeats an earlier draw of the same image (frequent for a confident posterior) is
    classified once."""
    S, b, K = masks.shape
    image = torch.arange(b, device=masks.device).expand(S, b).reshape(-1)
    flat = masks.reshape(-1, K)
    if bool(((flat == 0) | (flat == 1)).all()):  # hard masks: classify each distinct (image, mask) once
        pairs, inverse = torch.unique(torch.cat([image[:, None].to(flat.dtype), flat], 1), dim=0,
                                      return_inverse=True)
        image, flat = pairs[:, 0].long(), pairs[:, 1:]
    else:
        inverse = torch.arange(flat.shape[0], device=flat.device)
    sims, idx = neighbours(safe_normalize(z[image] * flat), inputs.bank.features, inputs.knn_k)
    labels = knn_votes(sims, idx, inputs.bank.y, inputs.num_classes).argmax(1)
    return labels[inverse].view(S, b)


@register("knn_disagreement", "gate", "1 − share of the modal kNN label over S mask draws m_s ~ q(m | x), "
          "features normalize(z ⊙ m_s)")
def knn_disagreement_score(inputs: ScoreInputs) -> torch.Tensor:
    h, z, S = inputs.out["h"], inputs.out["z"], inputs.samples
    shares = []
    with torch.random.fork_rng(devices=[z.device] if z.is_cuda else []), torch.no_grad():
        torch.manual_seed(inputs.seed)  # reproducible draws; the caller's random state is left as it was
        for rows in _chunks(z.shape[0], BLOCK // (S * z.shape[1])):
            masks = inputs.guide.sample_masks(h[rows], S, z[rows])  # [S, b, K]
            shares.append(modal_share(masked_knn_labels(z[rows], masks, inputs), inputs.num_classes))
    return 1 - torch.cat(shares)


def dice(mu: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """mu [N, K] in [0, 1], gates [N, J, K] in {0, 1} → [N, J] soft Dice 2 Σ_d μ_d g_d / (Σ_d μ_d + Σ_d g_d)
    (1: the same gates; 0 where both are empty)."""
    mu = mu.double()[:, None, :]
    gates = gates.double()
    denominator = mu.sum(-1) + gates.sum(-1)
    return torch.where(denominator > 0, 2 * (mu * gates).sum(-1) / denominator.clamp_min(1e-12),
                       torch.zeros_like(denominator))


@register("neighbour_gate_agreement", "gate", "1 − mean over the k nearest training neighbours of the soft Dice "
          "overlap 2 Σ μ_d g_d / (Σ μ_d + Σ g_d) of the posterior marginals μ with the neighbour's test-time gate g")
def neighbour_gate_score(inputs: ScoreInputs) -> Optional[torch.Tensor]:
    if inputs.bank.gate is None:
        return None
    _, idx = inputs.knn()
    mu = inputs.out["probs"]
    return 1 - torch.cat([dice(mu[rows], inputs.bank.gate[idx[rows]]).mean(1)
                          for rows in _chunks(mu.shape[0], BLOCK // (idx.shape[1] * mu.shape[1]))])


@register("kth_distance", "deterministic", "1 − cos(x, k-th nearest training image), k the kNN evaluation's "
          "(--knn-k)")
def kth_distance_score(inputs: ScoreInputs) -> torch.Tensor:
    sims, _ = inputs.knn()
    return 1 - sims[:, -1].double()


def topk_margin(values: torch.Tensor, k: int) -> torch.Tensor:
    """values [N, K] → [N] v_(k) − v_(k+1): the gap between each row's k-th and (k + 1)-th largest entries."""
    top = values.topk(k + 1, dim=1).values
    return (top[:, k - 1] - top[:, k]).double()


@register("topk_margin", "deterministic", "−(v_(k) − v_(k+1)) of the normalised z (for the top-k activation: before "
          "its cut), k the budget of the gate or activation, else K/32 (at least 2)")
def topk_margin_score(inputs: ScoreInputs) -> Optional[torch.Tensor]:
    values = inputs.out.get("ranked", inputs.out["z"])
    k = inputs.budget or default_topk(values.shape[1])
    return None if k >= values.shape[1] else -topk_margin(values, k)


@register("vote_share", "deterministic", "1 − max_c V_c / Σ_c V_c, V the weighted kNN votes (weights exp(cos/0.07)) "
          "of the kNN evaluation")
def vote_share_score(inputs: ScoreInputs) -> torch.Tensor:
    votes = inputs.votes().double()
    return 1 - votes.max(1).values / votes.sum(1).clamp_min(1e-300)


def compute_scores(inputs: ScoreInputs, names=None) -> Dict[str, torch.Tensor]:
    """{name: [N] float64 scores} for the registered scores (``names``: a subset) that exist for this run: gate
    scores only when it is gated, and none that returns None."""
    out = {}
    for name in names or SCORES.names():
        score = SCORES[name]
        if score.kind == "gate" and not inputs.gated:
            continue
        value = score.fn(inputs)
        if value is not None:
            out[name] = value.detach().cpu().double()
    return out


def definitions() -> Dict[str, Tuple[str, str]]:
    """{name: (kind, definition)} of every registered score."""
    return {name: (SCORES[name].kind, SCORES[name].definition) for name in SCORES.names()}
