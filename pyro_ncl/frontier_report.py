"""The frontier protocol's reports, from the measured run folders (``pyro_ncl.measure``): the selection stage on the
validation split (frontier.md, frontier.json, frontier.png, selection.json), the final stage on the test split
(final.md, final.json, final.png), and the learning curve over training lengths (curve.md, curve.json, curve.png).
Every page is headed by its command, commit and CPU (``header``). The rule that chooses is in ``pyro_ncl.frontier``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_ncl.backends import cpu_model  # noqa: E402
from pyro_ncl.frontier import (REFERENCE, TRAINED, baselines, choose_default, paired_margins,  # noqa: E402
                               point_key, reported_points, select, summarise, target_consistency)
from pyro_ncl.measure import measured, record  # noqa: E402

COLUMNS = [("knn_accuracy", "kNN"), ("linear_probe_features", "linear (features)"),
           ("linear_probe_backbone", "linear (h)"), ("semantic_consistency", "consistency"),
           ("weighted_consistency", "weighted cons."), ("active_dims", "active dims"),
           ("active_per_image", "active / image"), ("open_gates_per_image", "open gates / image"),
           ("posterior_entropy", "entropy / image"), ("doubt_entropy", "doubt / image"),
           ("uncertain_images", "uncertain images"), ("uncertain_active_images", "uncertain (active) images"),
           ("closed_active", "closed active"), ("background_leakage", "leakage")]
MARGINS = [("threshold", "NCL+threshold"), ("top_k", "NCL+top-k"), ("posthoc", "all post-hoc"),
           ("trained_top_k", "ncl_topk")]
CURVE_COLUMNS = [("knn_accuracy", "kNN"), ("semantic_consistency", "consistency"),
                 ("weighted_consistency", "weighted cons."), ("active_dims", "active dims"),
                 ("posterior_entropy", "entropy / image"), ("doubt_entropy", "doubt / image"),
                 ("uncertain_images", "uncertain images"), ("uncertain_active_images", "uncertain (active) images")]


def header(title: str, command: Optional[str]) -> str:
    """"# title", then the command, the code's commit and the CPU the figures come from."""
    from pyro_ncl.provenance import provenance, short

    return (f"# {title}\n\n" + (f"Command: `{command}`; " if command else "")
            + f"{short(provenance())}; CPU: {cpu_model()}")


def collect(jobs: List[dict], split: str) -> List[dict]:
    """Every measured run's rows on ``split``, labelled with its design, knob value and seed."""
    rows = []
    for job in jobs:
        path = job["dir"] / "frontier.json"
        if not measured(path, job["posthoc"], split):
            continue
        for row in record(path)["splits"][split]:
            rows.append({"design": job["design"], "knob_key": job["knob_key"], "knob": job["knob"],
                         "seed": job["seed"], **row})
    return rows


def _fmt(point: dict, metric: str) -> str:
    mean, std, n = point[metric], point[f"{metric}_std"], point[f"{metric}_n"]
    if n == 0 or not math.isfinite(mean):
        return "–"
    digits = 1 if metric in ("active_dims", "active_per_image", "open_gates_per_image") else 3
    if metric == "posterior_entropy":
        digits = 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def _fmt_margin(m: Optional[dict]) -> str:
    if not m or not m["n"]:
        return "–"
    return f"{m['mean']:+.3f} ± {m['std']:.3f} ({m['wins']}/{m['n']})"


def point_label(point: dict, knob_keys: Dict[str, str]) -> str:
    parts = []
    if point["knob"] is not None:
        parts.append(f"{knob_keys.get(point['design'], 'knob')}={point['knob']}")
    if point["param"] is not None:
        parts.append({"threshold": "q", "top-k": "k", "rate-cap": "r"}.get(point["variant"], "p")
                     + f"={point['param']}")
    if point["variant"] in ("mode", "mean"):
        parts.append(f"test gate {point['variant']}")
    return ", ".join(parts)


def _table(points: List[dict], knob_keys: Dict[str, str]) -> List[str]:
    columns = [(m, label) for m, label in COLUMNS if any(p[f"{m}_n"] for p in points)]
    lines = ["| curve | setting | seeds | " + " | ".join(label for _, label in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for p in points:
        star = " ★" if p["pareto"] else ""
        lines.append(f"| {p['curve']}{star} | {point_label(p, knob_keys)} | {len(p['seeds'])} | "
                     + " | ".join(_fmt(p, metric) for metric, _ in columns) + " |")
    return lines


def _selection_table(chosen: Dict[str, dict], knob_keys: Dict[str, str]) -> List[str]:
    lines = ["| design | chosen point | within 1 pt of NCL | kNN | consistency | "
             + " | ".join(f"vs {label}" for _, label in MARGINS)
             + " | weighted cons. | weighted vs all post-hoc | weighted vs ncl_topk |",
             "|---|---|---|---|---|" + "---|" * (len(MARGINS) + 3)]
    for design, entry in chosen.items():
        p, weighted = entry["point"], entry.get("weighted_margins", {})
        lines.append(f"| {design} | {point_label(p, knob_keys)} | {'yes' if entry['eligible'] else 'no'} | "
                     f"{_fmt(p, 'knn_accuracy')} | {_fmt(p, 'semantic_consistency')} | "
                     + " | ".join(_fmt_margin(entry["margins"].get(name)) for name, _ in MARGINS)
                     + f" | {_fmt(p, 'weighted_consistency')} | {_fmt_margin(weighted.get('posthoc'))} | "
                       f"{_fmt_margin(weighted.get('trained_top_k'))} |")
    return lines


def plot(points: List[dict], path: Path, split: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 6.5))
    for curve in dict.fromkeys(p["curve"] for p in points):
        members = sorted((p for p in points if p["curve"] == curve and math.isfinite(p["knn_accuracy"])),
                         key=lambda p: p["knn_accuracy"])
        if not members:
            continue
        style = dict(marker="*", markersize=14, linestyle="none") if len(members) == 1 else dict(marker="o")
        ax.errorbar([p["knn_accuracy"] for p in members], [p["semantic_consistency"] for p in members],
                    xerr=[p["knn_accuracy_std"] for p in members],
                    yerr=[p["semantic_consistency_std"] for p in members], capsize=2, label=curve, **style)
    ref = next((p for p in points if p["curve"] == REFERENCE), None)
    if ref is not None:
        ax.axhline(target_consistency(ref), color="grey", linestyle="--", linewidth=1, label="goal: NCL + ½(1 − NCL)")
        ax.axvspan(ref["knn_accuracy"] - 0.01, ax.get_xlim()[1], color="grey", alpha=0.08,
                   label="kNN within 1 point of NCL")
    ax.set(xlabel=f"kNN accuracy on the evaluated features ({split})", ylabel=f"semantic consistency ({split})",
           title=f"consistency–accuracy front on the {split} split (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _order(points: List[dict], jobs: List[dict]) -> List[dict]:
    order = {name: i for i, name in enumerate(dict.fromkeys(j["design"] for j in jobs))}
    return sorted(points, key=lambda p: (order.get(p["design"], 0), p["variant"], _sort_key(p["knob"]),
                                         _sort_key(p["param"])))


def _sort_key(value):
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def selection_report(jobs: List[dict], out: Path, header: str) -> dict:
    """The selection stage's outputs, from the validation split only."""
    rows = collect(jobs, "val")
    points = _order(summarise(rows), jobs)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    chosen = select(rows, points, REFERENCE, TRAINED)
    candidates = list(dict.fromkeys(j["design"] for j in jobs if j["candidate"]))
    picked = choose_default(chosen, candidates)
    default = picked["design"] if picked else None
    def reported(design, entry):  # a design's point for the final table: within 1 point of NCL, else its widest
        if design == default:
            return picked["point"]
        return entry["point"] if entry["eligible"] or entry["widest"]["point"] is None else entry["widest"]["point"]

    selection = {design: {"knob_key": knob_keys.get(design), "knob": reported(design, e)["knob"],
                          "variant": reported(design, e)["variant"], "eligible": e["eligible"]}
                 for design, e in chosen.items()}
    (out / "selection.json").write_text(json.dumps({"designs": selection, "default": default,
                                                    "default_within_1pt": bool(picked and picked["within_1pt"]),
                                                    "candidates": candidates}, indent=1))
    (out / "frontier.json").write_text(json.dumps({"split": "val", "rows": rows, "points": points,
                                                   "chosen": chosen, "default": default}, indent=1, default=str))
    lines = [header, "", "All numbers on the **validation split** (the last training images, held out); the test "
             "split is not read. Mean ± std over seeds; ★ = Pareto-optimal in (kNN, consistency).", "",
             *_table(points, knob_keys)]
    if chosen:
        ref = next(p for p in points if p["curve"] == REFERENCE)
        lines += ["", "## Selection (validation split)", "",
                  f"Each design's most consistent point within 1 point of NCL's kNN and linear probe on h (NCL: kNN "
                  f"{_fmt(ref, 'knn_accuracy')}, consistency {_fmt(ref, 'semantic_consistency')}; target "
                  f"{target_consistency(ref):.3f}). Margins: the point's consistency minus the baseline front's at "
                  f"the point's kNN, paired by seed (mean ± std, wins/n); the weighted columns do the same in "
                  f"activation-weighted consistency, against fronts drawn in it.", "",
                  *_selection_table(chosen, knob_keys), "",
                  "Each design's widest point (the largest mean margin over all post-hoc cuts at its own kNN):", "",
                  "| design | point | kNN | consistency | vs all post-hoc |", "|---|---|---|---|---|",
                  *[f"| {d} | {point_label(e['widest']['point'], knob_keys)} | "
                    f"{_fmt(e['widest']['point'], 'knn_accuracy')} | "
                    f"{_fmt(e['widest']['point'], 'semantic_consistency')} | {_fmt_margin(e['widest']['posthoc'])} |"
                    for d, e in chosen.items() if e["widest"]["point"] is not None], "",
                  (f"Default (the candidate whose front lies furthest above every post-hoc cut): **{default}** at "
                   f"{point_label(picked['point'], knob_keys)}"
                   + (", its most consistent point within 1 point of NCL's kNN." if picked["within_1pt"] else
                      ", its widest point: it has no point within 1 point of NCL's kNN and linear probe on h that "
                      "lies above the post-hoc cuts.") if picked else "No candidate design.")]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    if points:
        plot(points, out / "frontier.png", "validation")
    return {"points": points, "chosen": chosen, "default": default}


def curve_entries(jobs: List[dict], lengths: List[int]) -> List[dict]:
    """Per training length and design (NCL first): the point the validation split's selection rule chooses at that
    length (``pyro_ncl.frontier.select``; NCL: its own features) with its paired margins over the post-hoc cuts of
    the NCL runs of the same length and over ncl_topk."""
    entries = []
    for epochs in lengths:
        own = [job for job in jobs if job["epochs"] == epochs]
        rows = collect(own, "val")
        points = _order(summarise(rows), own)  # the selection page's order: a tie is broken as there
        ref = next((p for p in points if p["curve"] == REFERENCE), None)
        if ref is not None:
            entries.append({"epochs": epochs, "design": REFERENCE, "point": ref, "eligible": True, "margins": {},
                            "weighted_margins": {}})
        for design, entry in select(rows, points, REFERENCE, TRAINED).items():
            entries.append({"epochs": epochs, "design": design, **{k: entry[k] for k in
                                                                   ("point", "eligible", "margins",
                                                                    "weighted_margins")}})
    return entries


def learning_curve(jobs: List[dict], out: Path, header: str, lengths: List[int]) -> dict:
    """OUT/curve.md, curve.json and curve.png: each design's chosen point against the training length."""
    entries = curve_entries(jobs, lengths)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    columns = [(m, label) for m, label in CURVE_COLUMNS if any(e["point"].get(f"{m}_n") for e in entries)]
    lines = [header.replace("Consistency–accuracy front", "Learning curve"), "",
             "Each design's chosen point on the **validation split** at each training length (the selection rule of "
             "frontier.md, applied per length: `epochs=E/frontier.md`), mean ± std over seeds; margins paired by "
             "seed against the post-hoc cuts of the NCL runs of the same length and against ncl_topk, read at the "
             "design's own kNN (mean ± std, wins/n). *doubt*: the posterior entropy of the gates on z's non-zero "
             "entries (the part that changes the features); *entropy − doubt* is spent on gates the budget forces "
             "open on zeros.", "",
             "| design | epochs | point | " + " | ".join(label for _, label in columns)
             + " | vs all post-hoc | vs ncl_topk | weighted vs all post-hoc |",
             "|---|---|---|" + "---|" * (len(columns) + 3)]
    for e in sorted(entries, key=lambda e: (list(dict.fromkeys(x["design"] for x in entries)).index(e["design"]),
                                            e["epochs"])):
        lines.append(f"| {e['design']} | {e['epochs']} | {point_label(e['point'], knob_keys) or '–'} | "
                     + " | ".join(_fmt(e["point"], m) for m, _ in columns)
                     + f" | {_fmt_margin(e['margins'].get('posthoc'))} | {_fmt_margin(e['margins'].get('trained_top_k'))}"
                       f" | {_fmt_margin(e['weighted_margins'].get('posthoc'))} |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")
    (out / "curve.json").write_text(json.dumps({"split": "val", "lengths": lengths, "entries": entries}, indent=1,
                                               default=str))
    if entries:
        plot_curve(entries, out / "curve.png")
    return {"entries": entries}


def plot_curve(entries: List[dict], path: Path) -> None:
    """Consistency (count-based, weighted) and kNN against the training length (log scale), one line per design
    (mean ± std over seeds, the designs nudged apart along x so their bars do not hide each other); dashed, in the
    design's colour, a bar marking each length: the post-hoc cuts' front at the design's own kNN (its consistency
    minus its mean paired margin)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [("semantic_consistency", "posthoc", "margins", "semantic consistency"),
              ("weighted_consistency", "posthoc", "weighted_margins", "activation-weighted consistency"),
              ("knn_accuracy", None, None, "kNN accuracy")]
    designs = list(dict.fromkeys(e["design"] for e in entries))
    lengths = sorted({e["epochs"] for e in entries})
    for i, design in enumerate(designs):
        mine = sorted((e for e in entries if e["design"] == design), key=lambda e: e["epochs"])
        x = [e["epochs"] * 1.04 ** (i - (len(designs) - 1) / 2) for e in mine]
        for ax, (metric, front, margins, title) in zip(axes, panels):
            ys = [e["point"][metric] for e in mine]
            ax.errorbar(x, ys, yerr=[e["point"][f"{metric}_std"] for e in mine], marker="o", capsize=3,
                        color=f"C{i}", label=design)
            if front and design != REFERENCE:
                found = [e[margins].get(front, {}) for e in mine]
                level = [y - m["mean"] if m.get("n") else math.nan for y, m in zip(ys, found)]
                ax.plot(x, level, linestyle="--", marker="_", markersize=14, markeredgewidth=2, color=f"C{i}",
                        alpha=0.6, label=f"post-hoc cuts at {design}'s kNN")
    for ax, (_, _, _, title) in zip(axes, panels):
        ax.set(xlabel="training epochs", title=title, xscale="log", xlim=(lengths[0] / 1.5, lengths[-1] * 1.5))
        ax.set_xticks(lengths, [str(v) for v in lengths])
        ax.minorticks_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(designs), fontsize=7, frameon=False)
    fig.suptitle("the gate against NCL sparsified after training, as the encoder trains (validation split)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def final_report(jobs: List[dict], out: Path, header: str, selection: dict) -> dict:
    rows = collect(jobs, "test")
    chosen_keys = {(d, s["knob"], s["variant"]) for d, s in selection["designs"].items()}
    rows = [r for r in rows if r["design"] == REFERENCE or (r["design"], r["knob"], r["variant"]) in chosen_keys
            or r["design"] == TRAINED]
    points = _order(summarise(rows), jobs)
    knob_keys = {j["design"]: j["knob_key"] for j in jobs if j["knob_key"]}
    fronts = baselines(REFERENCE, TRAINED)
    ref = next((p for p in points if p["curve"] == REFERENCE), None)
    report = {}
    for p in reported_points(points, selection):
        own = {k: v for k, v in fronts.items() if p["design"] not in {c.split("+")[0] for g in v for c in g}}
        report[p["design"]] = {"point": p, "eligible": ref is not None and p["knn_accuracy"] >= ref["knn_accuracy"]
                               - 0.01 and p["linear_probe_backbone"] >= ref["linear_probe_backbone"] - 0.01,
                               "margins": paired_margins(rows, point_key(p), own),
                               "weighted_margins": paired_margins(rows, point_key(p), own, "weighted_consistency")}
    default = selection.get("default")
    lines = [header, "", "The points chosen on the validation split (`selection.json`), measured on the **test "
             "split**. Mean ± std over seeds; margins paired by seed at each design's own kNN (mean ± std, "
             "wins/n).", "", *_table(points, knob_keys), "", "## Margins (test split)", "",
             *_selection_table(report, knob_keys)]
    goal = {}
    if ref is not None and default in report:
        entry, p = report[default], report[default]["point"]
        target = target_consistency(ref)
        margins = entry["margins"]
        goal = {"design": default, "knn_within_1pt": p["knn_accuracy"] >= ref["knn_accuracy"] - 0.01,
                "above_threshold_every_seed": _every(margins.get("threshold")),
                "above_top_k_every_seed": _every(margins.get("top_k")),
                "above_ncl_topk_every_seed": _every(margins.get("trained_top_k")),
                "target": target, "meets_target": p["semantic_consistency"] >= target,
                "share_to_target": (p["semantic_consistency"] - ref["semantic_consistency"])
                / (target - ref["semantic_consistency"]),
                "uncertain_images": p["uncertain_images"], "not_degenerate": p["uncertain_images"] >= 0.1}
        lines += ["", f"## Goal check of the default `{default}` (test split)", "",
                  f"- kNN {_fmt(p, 'knn_accuracy')} against NCL's {_fmt(ref, 'knn_accuracy')}: "
                  f"{'within' if goal['knn_within_1pt'] else 'not within'} 1 point;",
                  f"- consistency {_fmt(p, 'semantic_consistency')} against NCL's "
                  f"{_fmt(ref, 'semantic_consistency')}; target NCL + ½(1 − NCL) = {target:.3f} "
                  f"({'met' if goal['meets_target'] else 'not met'}; {goal['share_to_target']:.0%} of the way);",
                  f"- above NCL + threshold in every seed: {_yes(goal['above_threshold_every_seed'])}; above NCL + "
                  f"top-k: {_yes(goal['above_top_k_every_seed'])}; above ncl_topk: "
                  f"{_yes(goal['above_ncl_topk_every_seed'])};",
                  f"- test images with an uncertain gate (0.1 < q < 0.9): {_fmt(p, 'uncertain_images')} "
                  f"({'at least' if goal['not_degenerate'] else 'below'} 10%)."]
    (out / "final.md").write_text("\n".join(lines) + "\n")
    (out / "final.json").write_text(json.dumps({"split": "test", "rows": rows, "points": points, "report": report,
                                                "goal": goal}, indent=1, default=str))
    if points:
        plot(points, out / "final.png", "test")
    return {"points": points, "report": report, "goal": goal}


def _every(m: Optional[dict]) -> Optional[bool]:
    return None if not m or not m["n"] else m["wins"] == m["n"]


def _yes(flag: Optional[bool]) -> str:
    return "–" if flag is None else "yes" if flag else "no"


def record_page(page: Path, title: str, md: Path, png: Optional[Path] = None) -> str:
    """Append a stage's page (``md``: frontier.md, final.md or curve.md, its own title and command line left out,
    its sections one level down) and its figure (copied beside ``page``, named by the date, "-2", "-3", … for a
    later entry of the same day) to a results page as a dated entry (``pyro_ncl.results_page``)."""
    import datetime
    import shutil

    from pyro_ncl.results_page import append_entry

    lines = md.read_text().splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("Command:") or "; CPU:" in line), 1)
    body = [("#" + line) if line.startswith("## ") else line for line in lines[start:]]
    if png is not None and png.exists():
        stem = f"{page.stem}-{datetime.date.today().isoformat()}"
        figure, n = page.parent / f"{stem}{png.suffix}", 2
        while figure.exists():  # a second entry the same day: the first keeps its figure
            figure, n = page.parent / f"{stem}-{n}{png.suffix}", n + 1
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, figure)
        body = [f"![{title}]({figure.name})", *body]
    return append_entry(page, title, body)
