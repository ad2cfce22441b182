"""Re-evaluate a finished run with the full metric suite, and draw its figures (network in eval mode).

    python experiments/evaluate.py runs/bayesncl
    python experiments/evaluate.py runs/ncl --device cuda --tsne-samples 5000
    python experiments/evaluate.py runs/chosen --split test    # a run with --val-size: its test split, once

Writes RUN_DIR/eval/ (the run's own metrics.json is left alone):
    metrics.json                 the run's end-of-run metrics recomputed (linear probes on h and on the features,
                                 kNN, ...), the interpretability suite (test), retrieval P@1/3/5/10 and feature
                                 selection for k = 16, 32, ..., K (k = K: the probe on all features)
    gate_frequency_by_class.png  classes × dimensions: fraction of each class's test images opening the gate (gated)
    top_dims.png                 the test images that activate the most important dimensions most
    retrieval.png                retrieval precision against k
    sparsity.png                 histogram of the per-image fraction of active dimensions
    tsne.png                     2-D t-SNE of a sample of test features, coloured by class
Dimensions are ranked by an importance computed on the TRAIN split: the gate open frequency (gated runs), triCL's
s (likelihoods with an ``importance``), else the column sums of the row-normalised features.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Dict, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_ncl.cli import run_script, OneLineParser, int_at_least  # noqa: E402
from pyro_ncl.trained_run import Run, extract_split, gate_frequency_by_class, load_run  # noqa: E402
from pyro_ncl.metrics import (EPS, dimension_importance, feature_selection, interpretability_suite,  # noqa: E402
                              retrieval_precision)
from pyro_ncl.evaluation import score  # noqa: E402
from pyro_ncl.probes import linear_probe  # noqa: E402
from pyro_ncl.run_folder import write_metrics  # noqa: E402
from pyro_ncl.runtime import local_device  # noqa: E402

def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a finished run's folder (config.json, checkpoint.pt)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="the scored split (default: the run's own: val for a run with --val-size, else test)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="feature-extraction batch (default: the run's)")
    p.add_argument("--data-root", default=None, help="dataset folder, if it moved since training")
    p.add_argument("--probe-epochs", type=int_at_least(1), default=None,
                   help="linear-probe epochs (default: the run's)")
    p.add_argument("--knn-k", type=int_at_least(1), default=None, help="kNN neighbours (default: the run's)")
    p.add_argument("--top-k-dims", type=int_at_least(1), default=8,
                   help="dimensions shown in top_dims.png (default: 8)")
    p.add_argument("--top-images", type=int_at_least(1), default=8,
                   help="images per dimension in top_dims.png (default: 8)")
    p.add_argument("--tsne-samples", type=int_at_least(0), default=2000,
                   help="test points in the t-SNE (0: skip; default 2000)")
    p.add_argument("--seed", type=int_at_least(0, 2 ** 32 - 1), default=0,
                   help="seed of probes and the t-SNE sample (default: 0)")
    return p


def importance_of(run: Run, train: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, str]:
    """[K] importance of each dimension on the train split, and how it was computed. Gated runs: the gate open
    frequency, ties (e.g. gates open for every image) broken by the column sums of the gated features — the
    tie-break term stays below the frequency's resolution 1/N, so it never reorders distinct frequencies."""
    if run.gated:
        frequency = dimension_importance(train["gate"], "frequency").double()
        sums = dimension_importance(train["features"]).double()
        tie_break = 0.5 / len(train["gate"]) * sums / sums.max().clamp_min(1e-12)
        return frequency + tie_break, "gate_frequency (ties: column sums)"
    likelihood = run.system.model.likelihood
    if hasattr(likelihood, "importance"):
        return likelihood.importance.float().cpu(), "likelihood_importance"
    return dimension_importance(train["features"]).float(), "column_sum"


def compute_metrics(run: Run, train, test, importance: torch.Tensor, args, device) -> Dict:
    """The end-of-run metrics (``evaluation.score``), the interpretability suite, retrieval and feature selection."""
    C, K = run.data.num_classes, test["features"].shape[1]
    epochs = args.probe_epochs or run.config.probe_epochs
    Ftr, Fte, ytr, yte = train["features"], test["features"], train["y"], test["y"]
    metrics = score(train, test, run.data, device=device, probe_epochs=epochs,
                    knn_k=args.knn_k or run.config.knn_k, seed=args.seed, split=args.split)
    metrics.update(interpretability_suite(Fte, yte, C))
    ps = [p for p in (1, 3, 5, 10) if p < Fte.shape[0]]
    retrieval = retrieval_precision(Ftr, Fte, yte, importance=importance, ps=ps)
    metrics.update({f"retrieval_p{p}": retrieval[K][p] for p in ps})  # all K dimensions
    metrics["retrieval"] = {str(k): {f"P@{p}": v for p, v in row.items()} for k, row in retrieval.items()}
    probe = functools.partial(linear_probe, num_classes=C, epochs=epochs, seed=args.seed, device=device)
    ks = [k for k in retrieval if k < K]  # k = K is the probe on all features, trained above
    selection = feature_selection(Ftr, ytr, Fte, yte, importance=importance, ks=ks, probe_fn=probe) if ks else {}
    selection[K] = metrics["linear_probe_features"]
    metrics["feature_selection"] = {str(k): v for k, v in selection.items()}
    return metrics


# ---------------------------------------------------------------------------------------------------- figures


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gate_frequency(freq: torch.Tensor, path: Path) -> None:
    """freq [C, K]: fraction of each class's images opening gate d."""
    C, K = freq.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.15 * K, 20), 1.5 + 0.3 * C))
    im = ax.imshow(freq.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set(xlabel="dimension", ylabel="class", title="test images of each class with the gate open")
    if C <= 20:
        ax.set_yticks(range(C))
    fig.colorbar(im, ax=ax, label="open fraction")
    _save(fig, path)


def _gather(run: Run, split: str, indices: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Images [len(indices), C, H, W] (normalised) at the given dataset positions."""
    wanted, out, start = indices.tolist(), {}, 0
    for x, _ in run.data.eval_batches(split, batch_size, "cpu"):
        for i in wanted:
            if start <= i < start + x.shape[0]:
                out[i] = x[i - start]
        start += x.shape[0]
        if len(out) == len(set(wanted)):
            break
    return torch.stack([out[i] for i in wanted])


def _show(ax, image: torch.Tensor) -> None:
    img = image.float()
    img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-8)  # per-image contrast stretch
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([]), ax.set_yticks([])


def plot_top_dims(run: Run, test, importance: torch.Tensor, dims: int, per_dim: int, batch_size: int,
                  path: Path, split: str = "test") -> None:
    """Rows: the ``dims`` most important dimensions; columns: the test images with the largest feature values."""
    F, y = test["features"], test["y"]
    dims_idx = importance.topk(min(dims, F.shape[1])).indices
    top = F[:, dims_idx].topk(min(per_dim, F.shape[0]), dim=0)  # values/indices [per_dim, dims]
    images = _gather(run, split, top.indices.T.reshape(-1), batch_size)
    rows, cols = len(dims_idx), top.indices.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 1.2, 1.3 * rows), squeeze=False)
    for r, d in enumerate(dims_idx.tolist()):
        for c in range(cols):
            ax = axes[r, c]
            i = int(top.indices[c, r])
            _show(ax, images[r * cols + c])
            ax.set_title(f"{float(top.values[c, r]):.2f} (y={int(y[i])})", fontsize=7)
        axes[r, 0].set_ylabel(f"dim {d}\nimp {float(importance[d]):.2g}", fontsize=8)
    fig.suptitle("top-activating test images of the most important dimensions (value, class)", fontsize=9)
    _save(fig, path)


def plot_retrieval(retrieval: Dict[str, Dict[str, float]], path: Path) -> None:
    ks = sorted(int(k) for k in retrieval)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in retrieval[str(ks[0])]:
        ax.plot(ks, [retrieval[str(k)][p] for k in ks], marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k (top dimensions by train importance)", ylabel="precision", title="test retrieval")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend()
    _save(fig, path)


def plot_sparsity(F: torch.Tensor, path: Path) -> None:
    active = (F.abs() > EPS).float().mean(1).numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(active, bins=min(50, F.shape[1] + 1), range=(0, 1), color="C0")
    ax.axvline(active.mean(), color="C3", ls="--", label=f"mean {active.mean():.3f}")
    ax.set(xlabel="fraction of active dimensions per test image", ylabel="images", title="sparsity")
    ax.legend()
    _save(fig, path)


def plot_tsne(F: torch.Tensor, y: torch.Tensor, samples: int, seed: int, path: Path) -> None:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(F.shape[0], generator=gen)[:min(samples, F.shape[0])]
    X, labels = F[idx].double().numpy(), y[idx].numpy()
    perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3)))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(X) < 2 or float(X.var(0).sum()) < 1e-12:
        # every sampled feature the same (e.g. a collapsed gate): PCA's initialisation divides by zero and
        # scikit-learn's Barnes-Hut t-SNE then crashes the process on the NaNs
        ax.text(0.5, 0.5, "t-SNE skipped: the sampled test features are all the same", ha="center", va="center",
                wrap=True)
        ax.set(title="t-SNE", xticks=[], yticks=[])
        _save(fig, path)
        return
    # One OpenMP thread: Barnes-Hut t-SNE next to torch's OpenMP pool is ~30x slower on a loaded 2-core machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        emb = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(X)
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10" if labels.max() < 10 else "tab20", s=4)
    ax.legend(*sc.legend_elements(num=None), title="class", fontsize=6, loc="best", markerscale=0.7)
    ax.set(title=f"t-SNE of {len(idx)} test features", xticks=[], yticks=[])
    _save(fig, path)


# ---------------------------------------------------------------------------------------------------- main


def main(args) -> Dict:
    start = time.perf_counter()
    device = local_device(args.device)
    if not Path(args.run_dir).is_dir():
        raise ValueError(f"{args.run_dir} is not a folder (expected a finished run's folder with config.json)")
    run = load_run(args.run_dir, device=device, data_root=args.data_root)
    batch_size = args.batch_size or run.config.eval_batch_size
    knn_k = args.knn_k or run.config.knn_k
    if knn_k > run.data.num_train:
        raise ValueError(f"--knn-k {knn_k} is larger than the run's {run.data.num_train} training images")
    out = run.path / "eval"
    out.mkdir(exist_ok=True)
    args.split = args.split or run.data.eval_split  # a run with a validation split: val unless --split test
    if args.split == "val" and run.data.val is None:
        raise ValueError(f"{run.path} has no validation split (it was trained without --val-size)")
    train, test = extract_split(run, "train", batch_size), extract_split(run, args.split, batch_size)
    importance, how = importance_of(run, train)
    metrics = {"run": str(run.path), "method": run.config.method, "importance": how, "split": args.split}
    metrics.update(compute_metrics(run, train, test, importance, args, device))

    if run.gated:
        plot_gate_frequency(gate_frequency_by_class(test["gate"], test["y"], run.data.num_classes),
                            out / "gate_frequency_by_class.png")
    plot_top_dims(run, test, importance, args.top_k_dims, args.top_images, batch_size, out / "top_dims.png",
                  args.split)
    plot_retrieval(metrics["retrieval"], out / "retrieval.png")
    plot_sparsity(test["features"], out / "sparsity.png")
    if args.tsne_samples > 0:
        plot_tsne(test["features"], test["y"], args.tsne_samples, args.seed, out / "tsne.png")
    metrics["eval_seconds"] = time.perf_counter() - start
    write_metrics(out / "metrics.json", metrics)  # NaN as null
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print(f"wrote {out}")
    return metrics


def cli(argv=None):
    """Parse, run; bad input as one line and exit status 2 (``pyro_ncl.cli.run_script``)."""
    return run_script(main, parser(), argv)
