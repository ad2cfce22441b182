"""How sure is the gate? Per-image uncertainty scores of trained runs, side by side with deterministic ones.

    python experiments/uncertainty.py runs/bayesncl_s0 runs/bayesncl_s1 runs/bayesncl_s2 runs/ncl_s* --out runs/unc

For each run (network in eval mode: BatchNorm statistics untouched), on the test images of the classes it was
trained on, every score of ``pyro_ncl.uncertainty.SCORES`` (higher = more uncertain): the gate scores (posterior
entropy, KL to the prior, two-view mask disagreement, kNN disagreement over ``--samples`` mask draws, the
posterior's agreement with the neighbours' gates; gated runs only) and the deterministic ones on the same
features (distance to the k-th training neighbour, top-k margin, 1 − the kNN vote share). Tasks, each scored by
AUROC, AUPR and the false-positive rate at 95% true positives:
    misclassification   the test images the run's kNN classifier (k = --knn-k, cosine, T = 0.07) gets wrong; also
                        the risk–coverage curve and its area (AURC) when the most uncertain images are set aside
    near_ood            a run trained with --exclude-classes: the removed classes' test images against the others
    far_ood             scikit-learn's 8×8 digits (load_digits) resized to 28×28 (bilinear) against the test images
                        (runs on 1-channel 28 px images; skipped for others, with a note)
Runs that differ only in their seed form a group (mean ± std over seeds). Writes --out/uncertainty.json (per run
and per group), --out/uncertainty.md (one row per group × score × task; the best deterministic score per task and
whether a gate score beats every deterministic one by more than the seed spread) and --out/uncertainty.png (ROC
curves per task, risk–coverage curves; bands: ± std over seeds). Nothing is written until every run is scored.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as nnf  # noqa: E402

from pyro_ncl.backends import cpu_model  # noqa: E402
from pyro_ncl.config import BOOKKEEPING  # noqa: E402
from pyro_ncl.cli import run_script, OneLineParser, int_at_least  # noqa: E402
from pyro_ncl.evaluation import extract  # noqa: E402
from pyro_ncl.trained_run import Run, load_run  # noqa: E402
from pyro_ncl.aggregate import fmt_mean_std, group_by, mean_std  # noqa: E402
from pyro_ncl.run_folder import read_metrics, write_metrics  # noqa: E402
from pyro_ncl.runtime import local_device  # noqa: E402
from pyro_ncl.uncertainty import (SCORES, Bank, ScoreInputs, aupr, auroc, compute_scores, definitions,  # noqa: E402
                                  fpr_at_tpr, image_outputs, risk_coverage, roc)

TASKS = {"misclassification": "misclassification detection (kNN errors on the test images)",
         "near_ood": "near out-of-distribution: the test images of the classes removed from training",
         "far_ood": "far out-of-distribution: scikit-learn's 8×8 digits resized to 28×28"}
METRICS = ("auroc", "aupr", "fpr95", "aurc")
GRID = np.linspace(0, 1, 101)  # the curves in uncertainty.json and the figure, interpolated on it
FAR = ("digits", "none")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="finished runs' folders (config.json, checkpoint.pt)")
    p.add_argument("--out", default="runs/uncertainty", help="output folder (default: runs/uncertainty)")
    p.add_argument("--samples", type=int_at_least(1), default=16,
                   help="mask draws per image of knn_disagreement (default: 16)")
    p.add_argument("--far", choices=FAR, default="digits",
                   help="far out-of-distribution images: digits (sklearn's load_digits) or none (default: digits)")
    p.add_argument("--scores", default=None,
                   help=f"comma-separated scores (default: all): {', '.join(SCORES.names())}")
    p.add_argument("--eval-subset", type=int_at_least(1), default=None,
                   help="score the first N images of each split only, training bank included (quick checks)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="feature-extraction batch (default: the run's)")
    p.add_argument("--data-root", default=None, help="dataset folder, if it moved since training")
    p.add_argument("--seed", type=int_at_least(0, 2 ** 32 - 1), default=0,
                   help="seed of the augmented views and of the mask draws (default: 0)")
    return p


# ---------------------------------------------------------------------------------------------------- runs


def run_label(config) -> str:
    """What a group is called: "bayesncl exact_k π=0.03125 β=0.01", "ncl_topk k=4", "ncl", ..."""
    if config.prior != "none":
        return f"{config.method} {config.guide} π={config.prior_prob:g} β={config.kl_weight:g}"
    if config.non_neg == "topk":
        from pyro_ncl.budget import default_topk
        return f"{config.method} k={config.topk or default_topk(config.feature_dim)}"
    return config.method if config.likelihood == "nt_xent" else f"{config.method} {config.likelihood}"


def group_key(config) -> str:
    """The run's settings but its seed and bookkeeping: runs with one key are seeds of one group."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in ("seed", *BOOKKEEPING)},
                      sort_keys=True, default=str)


def group_labels(runs: List[Run]) -> List[str]:
    """A label per run: ``run_label``, plus the settings that tell apart groups that share it."""
    bases, keys = [run_label(r.config) for r in runs], [json.loads(group_key(r.config)) for r in runs]
    labels = []
    for base, key in zip(bases, keys):
        peers = [k for b, k in zip(bases, keys) if b == base]
        varying = sorted(name for name in key if len({json.dumps(p.get(name)) for p in peers}) > 1)
        labels.append(" ".join([base, *(f"{name}={key[name]}" for name in varying)]))
    return labels


def margin_budget(run: Run) -> Optional[int]:
    """k of topk_margin: the gate's budget (exact_k, budget_st), the top-k activation's, else None (K/32)."""
    k = getattr(run.system.guide, "k", None)
    activation = getattr(run.system.encoder, "_activation", None)
    return k if k is not None else getattr(getattr(activation, "budget", None), "k", None)


def digits(size: int, channels: int) -> torch.Tensor:
    """scikit-learn's 1,797 8×8 digits as float images [N, channels, size, size] in [0, 1] (bilinear resize)."""
    from sklearn.datasets import load_digits
    x = torch.from_numpy(load_digits().images).float().div_(16).unsqueeze(1)
    x = nnf.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return x.expand(-1, channels, -1, -1).contiguous()


def image_sets(run: Run, far: str, limit: Optional[int]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """{"test", "outliers" (with --exclude-classes), "far" (digits)}: images [N, C, H, W] (uint8 or float in [0, 1]),
    and notes on what was skipped."""
    data, notes = run.data, []
    if not hasattr(data, "augment") or not hasattr(data, "test"):
        raise ValueError(f"{run.path}: uncertainty.py needs an in-memory dataset (fashion-mnist, mnist, cifar10, "
                         f"cifar100, scenes), not {run.config.dataset}")
    sets = {"test": data.test.images[:limit]}
    if data.outliers is not None:
        sets["outliers"] = data.outliers.images[:limit]
    else:
        notes.append("near_ood skipped: the run was trained on every class (no --exclude-classes)")
    if far == "digits" and (data.in_channels, data.image_size) == (1, 28):
        sets["far"] = digits(28, 1)[:limit]
    elif far == "digits":
        notes.append(f"far_ood skipped: the digits are 1-channel 28 px images, this run's are {data.in_channels}-"
                     f"channel {data.image_size} px")
    return sets, notes


def task_metrics(scores: Dict[str, torch.Tensor], positives: torch.Tensor, selective: bool = False
                 ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[str, list]]]:
    """Per score: {auroc, aupr, fpr95[, aurc]} and the curves on GRID ({"roc": tpr at fpr = GRID[, "risk": risk
    at coverage = GRID]})."""
    metrics, curves = {}, {}
    for name, s in scores.items():
        fpr, tpr = roc(s, positives)
        metrics[name] = {"auroc": auroc(s, positives), "aupr": aupr(s, positives), "fpr95": fpr_at_tpr(s, positives)}
        curves[name] = {"roc": np.interp(GRID, fpr, tpr).round(4).tolist()}
        if selective:
            rc = risk_coverage(s, positives)
            metrics[name]["aurc"] = rc["aurc"]
            curves[name]["risk"] = np.interp(GRID, rc["coverage"], rc["risk"]).round(4).tolist()  # 0: the first
    return metrics, curves


def score_run(run: Run, label: str, args, names: List[str], device) -> dict:
    """One run's record: its settings, kNN accuracy, per task and score the metrics and curves, and notes."""
    start = time.perf_counter()
    data, config = run.data, run.config
    batch_size = args.batch_size or config.eval_batch_size
    train = {k: v.to(device) for k, v in extract(run.system, data, "train", batch_size, device,
                                                  args.eval_subset).items()}
    bank = Bank(train["features"], train["y"], train.get("gate"))  # scores run on the run's device
    sets, notes = image_sets(run, args.far, args.eval_subset)
    if not run.gated:
        notes.append("gate scores skipped: the run has no gate")
    scores, inputs = {}, {}
    for name, images in sets.items():
        out = image_outputs(run.system, images, data._normalise, batch_size, device, augment=data.augment,
                            seed=args.seed)
        out = {k: v.to(device) for k, v in out.items()}
        inputs[name] = ScoreInputs(out, bank, data.num_classes, knn_k=config.knn_k,
                                   guide=run.system.guide if run.gated else None, budget=margin_budget(run),
                                   samples=args.samples, seed=args.seed)
        with torch.no_grad():
            scores[name] = compute_scores(inputs[name], names)
    test_y = data.test.labels[:args.eval_subset]
    errors = inputs["test"].predictions().cpu() != test_y
    record = {"path": str(run.path), "label": label, "seed": config.seed, "method": config.method,
              "guide": config.guide, "prior": config.prior, "non_neg": config.non_neg,
              "exclude_classes": config.exclude_classes, "num_train": int(bank.y.shape[0]),
              "num_images": {name: int(images.shape[0]) for name, images in sets.items()},
              "knn_accuracy": float((~errors).double().mean()), "tasks": {}, "curves": {}, "notes": notes}
    record["run_knn_accuracy"] = _run_knn_accuracy(run)
    if 0 < int(errors.sum()) < errors.numel():
        record["tasks"]["misclassification"], record["curves"]["misclassification"] = task_metrics(
            scores["test"], errors, selective=True)
        record["oracle_aurc"] = risk_coverage(errors.double(), errors)["aurc"]
    else:
        notes.append("misclassification skipped: the kNN classifier gets every test image "
                     f"{'right' if not errors.any() else 'wrong'}")
    for task, outside in (("near_ood", "outliers"), ("far_ood", "far")):
        if outside in scores:
            joined = {k: torch.cat([scores["test"][k], scores[outside][k]]) for k in scores["test"]}
            positives = torch.cat([torch.zeros(len(sets["test"]), dtype=torch.bool),
                                   torch.ones(len(sets[outside]), dtype=torch.bool)])
            record["tasks"][task], record["curves"][task] = task_metrics(joined, positives)
    record["seconds"] = time.perf_counter() - start
    return record


def _run_knn_accuracy(run: Run) -> Optional[float]:
    """The run's own end-of-run kNN accuracy when it scored the test split (no validation split), else None."""
    path = run.path / "metrics.json"
    if run.config.val_size is not None or not path.is_file():
        return None
    value = read_metrics(path).get("knn_accuracy")
    return None if value is None or value != value else float(value)


# ---------------------------------------------------------------------------------------------------- groups


def summary(values: List[float]) -> Dict[str, object]:
    """{mean, std, n (``pyro_ncl.aggregate.mean_std``), values}."""
    mean, std, n = mean_std(values)
    return {"mean": mean, "std": std, "n": n, "values": values}


def group_scores(records: List[dict]) -> List[dict]:
    """Per group (records with one label, in first-seen order): per task, score and metric the summary over its
    runs, and the verdict per task."""
    out = []
    for label, members in group_by(records, lambda record: record["label"]).items():
        tasks = {}
        for task in TASKS:
            runs = [r["tasks"][task] for r in members if task in r["tasks"]]
            if not runs:
                continue
            names = [n for n in runs[0] if all(n in r for r in runs)]
            tasks[task] = {name: {m: summary([r[name][m] for r in runs]) for m in METRICS if m in runs[0][name]}
                           for name in names}
        out.append({"label": label, "runs": [r["path"] for r in members], "seeds": [r["seed"] for r in members],
                    "knn_accuracy": summary([r["knn_accuracy"] for r in members]), "tasks": tasks,
                    "verdicts": {task: verdict(scores) for task, scores in tasks.items()}})
    return out


def verdict(scores: Dict[str, Dict[str, dict]]) -> dict:
    """Does a gate score's AUROC beat every deterministic score's by more than the seed spread? A gate score g
    beats a deterministic score d when mean_g − mean_d > max(std_g, std_d) over the group's seeds (the ± of the
    table), with at least two seeds; paired differences (per seed) are given too."""
    kind = {name: definitions()[name][0] for name in scores}
    det = {n: s["auroc"] for n, s in scores.items() if kind[n] == "deterministic"}
    gate = {n: s["auroc"] for n, s in scores.items() if kind[n] == "gate"}
    best_det = max(det, key=lambda n: det[n]["mean"]) if det else None
    best_gate = max(gate, key=lambda n: gate[n]["mean"]) if gate else None
    result = {"best_deterministic": best_det, "best_gate": best_gate, "winners": [], "margins": {}}
    if best_det is None or best_gate is None:
        return result
    for name, g in gate.items():
        n = g["n"]
        margins = {d: g["mean"] - s["mean"] for d, s in det.items()}
        spreads = {d: max(g["std"], s["std"]) for d, s in det.items()}
        paired = [a - b for a, b in zip(g["values"], det[best_det]["values"])]
        result["margins"][name] = {"over_best": margins[best_det], "spread": spreads[best_det],
                                   "paired": summary(paired)}
        if n >= 2 and all(margins[d] > spreads[d] for d in det):
            result["winners"].append(name)
    return result


# ---------------------------------------------------------------------------------------------------- outputs


def cell(stat: Optional[dict]) -> str:
    return "–" if stat is None else fmt_mean_std(stat["mean"], stat["std"], stat["n"])


def ordered(names) -> List[str]:
    """Gate scores first, then deterministic ones, each alphabetically."""
    return sorted(names, key=lambda n: (definitions()[n][0] != "gate", n))


def markdown(groups: List[dict], records: List[dict], header: dict) -> str:
    lines = ["# How sure is the gate? (`experiments/uncertainty.py`)", "",
             f"Command: `{header['command']}`  ", f"CPU: {header['cpu']}; device {header['device']}; "
             f"{header['threads']} thread(s); S = {header['samples']} mask draws; far OOD: {header['far']}.", "",
             "Higher score = more uncertain. AUROC, AUPR (the errors / outliers as positives) and FPR at 95% TPR: "
             "mean ± std over the group's seeds (n runs); AURC (lower is better) for misclassification.", "",
             "| score | kind | definition |", "|---|---|---|"]
    lines += [f"| {n} | {definitions()[n][0]} | {definitions()[n][1]} |" for n in ordered(definitions())]
    lines += ["", "| group | n | kNN accuracy (test, trained classes) |", "|---|---|---|"]
    lines += [f"| {g['label']} | {len(g['runs'])} | {cell(g['knn_accuracy'])} |" for g in groups]
    for task, title in TASKS.items():
        rows = [(g, name, stats) for g in groups if task in g["tasks"]
                for name, stats in ((n, g["tasks"][task][n]) for n in ordered(g["tasks"][task]))]
        if not rows:
            lines += ["", f"## {task}: {title}", "", "No run has this task."]
            continue
        lines += ["", f"## {task}: {title}", "",
                  "| group | n | score | kind | AUROC | AUPR | FPR@95%TPR |" + (" AURC |" if task ==
                                                                                  "misclassification" else ""),
                  "|---|---|---|---|---|---|---|" + ("---|" if task == "misclassification" else "")]
        for g, name, stats in rows:
            extra = f" {cell(stats.get('aurc'))} |" if task == "misclassification" else ""
            lines.append(f"| {g['label']} | {stats['auroc']['n']} | {name} | {definitions()[name][0]} | "
                         f"{cell(stats['auroc'])} | {cell(stats['aupr'])} | {cell(stats['fpr95'])} |{extra}")
        lines.append("")
        for g in groups:
            if task in g["verdicts"]:
                lines.append(f"- {verdict_line(g['label'], g['verdicts'][task], g['tasks'][task])}")
    notes = sorted({f"{Path(r['path']).name}: {note}" for r in records for note in r["notes"]})
    lines += ["", "## Runs", "", "| run | group | seed | kNN accuracy | its metrics.json | seconds |",
              "|---|---|---|---|---|---|"]
    for r in records:
        own = "–" if r["run_knn_accuracy"] is None else f"{r['run_knn_accuracy']:.4f}"
        lines.append(f"| {r['path']} | {r['label']} | {r['seed']} | {r['knn_accuracy']:.4f} | {own} | "
                     f"{r['seconds']:.1f} |")
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def verdict_line(label: str, v: dict, scores: Dict[str, dict]) -> str:
    if v["best_deterministic"] is None:
        return f"{label}: no deterministic score to compare with."
    det = scores[v["best_deterministic"]]["auroc"]
    head = f"{label}: best deterministic score {v['best_deterministic']} (AUROC {cell(det)})"
    if v["best_gate"] is None:
        return head + "; no gate score (ungated run)."
    gate = scores[v["best_gate"]]["auroc"]
    margin = v["margins"][v["best_gate"]]
    paired = margin["paired"]
    text = (f"{head}; best gate score {v['best_gate']} (AUROC {cell(gate)}, {margin['over_best']:+.3f} against it, "
            f"paired per seed {paired['mean']:+.3f} ± {paired['std']:.3f})")
    if gate["n"] < 2:
        return text + "; one seed: no spread to compare with."
    if v["winners"]:
        return text + f"; **beats every deterministic score by more than the seed spread: {', '.join(v['winners'])}**."
    return text + "; no gate score beats every deterministic score by more than the seed spread."


def plot(groups: List[dict], records: List[dict], path: Path) -> None:
    """Rows: the ROC curves of each task present, then risk–coverage; columns: groups. Mean over seeds, band ± std;
    gate scores solid, deterministic ones dashed."""
    panels = [(t, "roc") for t in TASKS if any(t in g["tasks"] for g in groups)]
    if any("misclassification" in g["tasks"] for g in groups):
        panels.append(("misclassification", "risk"))
    panels = panels or [("misclassification", "roc")]
    colours = {name: f"C{i % 10}" for i, name in enumerate(ordered(definitions()))}
    fig, axes = plt.subplots(len(panels), len(groups), figsize=(4.2 * len(groups), 3.4 * len(panels)),
                             squeeze=False)
    for col, g in enumerate(groups):
        members = [r for r in records if r["label"] == g["label"]]
        for row, (task, curve) in enumerate(panels):
            ax = axes[row][col]
            ax.set_title(f"{g['label']}\n{task} ({'ROC' if curve == 'roc' else 'risk–coverage'})", fontsize=8)
            if task not in g["tasks"]:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
                continue
            for name in ordered(g["tasks"][task]):
                ys = np.array([r["curves"][task][name][curve] for r in members if task in r["curves"]], dtype=float)
                mean, std = ys.mean(0), (ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(len(GRID)))
                stat = g["tasks"][task][name]["auroc" if curve == "roc" else "aurc"]
                ax.plot(GRID, mean, ls="-" if definitions()[name][0] == "gate" else "--", color=colours[name],
                        lw=1.2, label=f"{name} {cell(stat)}")
                ax.fill_between(GRID, mean - std, mean + std, color=colours[name], alpha=0.15, lw=0)
            if curve == "roc":
                ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
                ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1))
            else:
                ax.set(xlabel="coverage (most certain first)", ylabel="risk (kNN error rate)", xlim=(0, 1))
            ax.legend(fontsize=5.5, loc="lower right" if curve == "roc" else "upper left",
                      title="AUROC" if curve == "roc" else "AURC", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _replace(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: an earlier file is replaced only by a complete one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def command_line(args) -> str:
    flags = [f"--out {args.out}", f"--samples {args.samples}", f"--far {args.far}"]
    flags += [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("scores", "eval_subset", "batch_size",
                                                                       "data_root") if getattr(args, k) is not None]
    flags += [f"--device {args.device}", f"--seed {args.seed}"]
    return " ".join(["python experiments/uncertainty.py", *args.runs, *flags])


# ---------------------------------------------------------------------------------------------------- main


def main(args) -> dict:
    """Check every input, score every run, then write the three outputs."""
    device = local_device(args.device)
    names = SCORES.names() if args.scores is None else [n.strip() for n in args.scores.split(",") if n.strip()]
    for name in names:
        SCORES[name]  # noqa: B018  one-line ValueError for an unknown score
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    for path in args.runs:
        if not Path(path).is_dir():
            raise ValueError(f"{path} is not a folder (expected a finished run's folder with config.json)")
    runs = [load_run(path, device=device, data_root=args.data_root) for path in args.runs]
    for run in runs:
        if run.config.knn_k > (args.eval_subset or run.data.num_train):
            raise ValueError(f"{run.path}: --knn-k {run.config.knn_k} is larger than the training images scored")
    labels = group_labels(runs)
    records = []
    for run, label in zip(runs, labels):
        records.append(score_run(run, label, args, names, device))
        print(f"{run.path}: {label}, kNN accuracy {records[-1]['knn_accuracy']:.4f}, "
              f"{records[-1]['seconds']:.1f} s", file=sys.stderr)
    groups = group_scores(records)
    header = {"command": command_line(args), "cpu": cpu_model(), "device": str(device),
              "threads": torch.get_num_threads(), "samples": args.samples, "far": args.far}
    result = {**header, "scores": {n: {"kind": k, "definition": d} for n, (k, d) in definitions().items()},
              "tasks": TASKS, "grid": GRID.round(4).tolist(), "groups": groups, "runs": records}
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "uncertainty.json", result)
    _replace(out / "uncertainty.md", lambda tmp: tmp.write_text(markdown(groups, records, header)))
    _replace(out / "uncertainty.png", lambda tmp: plot(groups, records, tmp))
    print(f"wrote {out / 'uncertainty.json'}, uncertainty.md, uncertainty.png")
    return result


def cli(argv=None):
    """Parse, run; bad input as one line and exit status 2 (``pyro_ncl.cli.run_script``)."""
    return run_script(main, parser(), argv)
