"""Figures written by runs (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(log_csv: Path, out_png: Path) -> None:
    """Loss per view against the step, with the contrastive term and the gate KL where logged."""
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss", "contrastive"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if len(values) == len(steps):
            axes[0].plot(steps, values, label=key)
    axes[0].set(xlabel="step", ylabel="per view", title="negative ELBO per view")
    axes[0].legend()
    kl = [float(r["gate_kl"]) for r in rows if r.get("gate_kl")]
    if len(kl) == len(steps):
        axes[1].plot(steps, kl, color="C2")
        axes[1].set(xlabel="step", ylabel="nats per view", title="gate KL(q ‖ p)")
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
