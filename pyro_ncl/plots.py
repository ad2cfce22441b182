"""Figures written by runs (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _column(rows, key):
    """The column's values as floats, or None unless every row has one."""
    values = [float(r[key]) for r in rows if r.get(key)]
    return values if values and len(values) == len(rows) else None


def plot_loss_curve(log_csv: Path, out_png: Path) -> None:
    """Loss per view against the step, with the contrastive term, and on the right the gate KL and, for the
    budgeted gates, the posterior entropy per view with the budget's anneal shaded (while k_t falls, the KL falls
    with the schedule: −k_t log π − (K − k_t) log(1 − π) is a constant of each step; −H is what the model learns)."""
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss", "contrastive"):
        values = _column(rows, key)
        if values:
            axes[0].plot(steps, values, label=key)
    axes[0].set(xlabel="step", ylabel="per view", title="negative ELBO per view")
    axes[0].legend()
    kl, entropy, budget = _column(rows, "gate_kl"), _column(rows, "gate_entropy"), _column(rows, "budget")
    if kl:
        axes[1].plot(steps, kl, color="C2", label="gate KL(q ‖ p)")
        if entropy:
            axes[1].plot(steps, entropy, color="C3", label="posterior entropy H(q)")
        if budget and budget[0] > budget[-1]:
            end = next(s for s, b in zip(steps, budget) if b <= budget[-1])
            axes[1].axvspan(steps[0], end, color="0.9", label=f"budget anneal (k_t → {budget[-1]:.0f})")
        axes[1].set(xlabel="step", ylabel="nats per view", title="gate term")
        axes[1].legend(fontsize=8)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def gate_frequency_figure(freq, title: str = "images of each class with the gate open"):
    """freq [C, K] (a tensor or array): the fraction of each class's images opening gate d, as a heat map."""
    freq = freq.numpy() if hasattr(freq, "numpy") else freq
    C, K = freq.shape
    fig, ax = plt.subplots(figsize=(min(max(5, 3 + 0.05 * K), 20), min(1.5 + 0.3 * C, 20)))
    im = ax.imshow(freq, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="dimension", ylabel="class", title=title)
    if C <= 20:
        ax.set_yticks(range(C))
    fig.colorbar(im, ax=ax, label="open fraction")
    fig.tight_layout()
    return fig
