"""What the default gate costs a training step: aten operations (kernel launches on a GPU) and time of one step of
the exactly-k gate alone (one ``ConditionalBernoulli`` of the batch's logits, its SIMPLE sample, its exact KL,
backward), beside the encoder's forward + backward at the same batch, measured in the same run.

    python experiments/bench_gate.py                      # the table, K ∈ {128, 512, 2048}, k ∈ {4, K/32, K/2}
    python experiments/bench_gate.py --device cuda        # on a GPU: CUDA-event times, kernels counted
    python experiments/bench_gate.py --record docs/results/benchmarks.md   # also append a dated entry there

Rows: operations counted by ``torch.profiler`` (every aten op, nested ones included: on a GPU each that computes is
a kernel launch of several µs); time per step (median of ``--repeats``); the encoder's forward + backward at the
same number of views (small_resnet at 28 px), and the gate's share gate / (encoder + gate). Then two checks:

* the ImageNet-100 recipe's shapes: ResNet-18 at 224 px, 8 images = 16 views, K = 2048, k = 64 (π 1/32), the
  gate's share of encoder + gate;
* the budget anneal at K = 2048 (``pyro_ncl.budget``): the gate's mean time per step over the whole anneal, k_t
  from its start to k = 64 (``--anneal-points`` evenly spaced fractions of the anneal), over its time at k, for
  the default (linear from min(K, max(128, 3k)) = 192) and the linear fall from K (the default at K = 128).

CPU figures depend on the CPU (``lscpu``): compare ratios measured in one run. ``--threads`` sets torch's threads
(default 1: the figures of docs/results/benchmarks.md).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from pyro_ncl.backends import cpu_model
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.encoders import build_encoder
from pyro_ncl.results_page import append_entry

PRIOR_PROB = 1 / 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``step`` (after one warm-up call); CUDA events on a GPU."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def count(step: Callable[[], None], device: torch.device) -> Dict[str, int]:
    """{"ops": aten operations (nested included), "kernels": GPU kernels (CUDA only)} of one call."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    sync(device)
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.events()
    out = {"ops": sum(e.name.startswith("aten::") for e in events)}
    if device.type == "cuda":
        out["kernels"] = sum(getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA for e in events)
    return out


def gate_step(views: int, K: int, k: int, device: torch.device, seed: int = 0) -> Callable[[], None]:
    """One training step of the gate on logits [views, K] of a run's scale (θ = z/s + head(h), s 0.05)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.rand(views, K, generator=generator) ** 4  # sparse-ish non-negative features
    logits = (torch.nn.functional.normalize(z, dim=-1) / 0.05).to(device).requires_grad_()
    weight = torch.randn(views, K, generator=generator).to(device)
    prior = torch.tensor(PRIOR_PROB, device=device)

    def step():
        q = ConditionalBernoulli(logits, k, validate_args=False)
        loss = (q.rsample() * weight).sum() + q.kl_to_bernoulli(prior).sum()
        loss.backward()
        logits.grad = None
    return step


def encoder_step(backbone: str, views: int, size: int, channels: int, K: int, hidden: int,
                 device: torch.device) -> Callable[[], None]:
    """The encoder's forward + backward on [views, channels, size, size] random images."""
    torch.manual_seed(0)
    cifar_stem = backbone != "resnet18"
    encoder = build_encoder(backbone, channels, 16, cifar_stem, hidden, K, "relu").to(device)
    x = torch.randn(views, channels, size, size, device=device)

    def step():
        h, z = encoder(x)
        (h.sum() + z.sum()).backward()
        encoder.zero_grad(set_to_none=True)
    return step


def default_views(K: int, k: int) -> int:
    """512 views (batch 256) up to K = 512, 256 (the ImageNet-100 recipe's batch 128) at K = 2048; 32 for the
    widest budget at K = 2048 (its tables take several GB at 256 views)."""
    if K <= 512:
        return 512
    return 32 if 2 * k >= K else 256


def anneal_values(K: int, k: int, schedule: str, start: Optional[int], points: int) -> List[int]:
    """k_t at ``points`` evenly spaced fractions of the anneal (the library's schedule; the linear one by hand when
    the library predates schedules)."""
    try:
        from pyro_ncl.budget import Budget
        budget = Budget(K, k, 1.0, schedule, start)
        return [budget.at((i + 0.5) / points) for i in range(points)]
    except (ImportError, TypeError):
        first = K if start is None else start
        return [max(k, math.ceil(first - (first - k) * (i + 0.5) / points - 1e-9)) for i in range(points)]


def main(args) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.feature_dims, args.repeats = [128], 1
    results = {"rows": [], "device": str(device), "threads": args.threads}
    print(f"device {device}{'' if device.type == 'cuda' else f' ({cpu_model()}), {args.threads} thread(s)'}")
    print("| K | k | views | aten ops / step" + (" | kernels" if device.type == "cuda" else "")
          + " | gate ms / step | encoder ms (small_resnet, 28 px) | gate share |")
    print("|---|---|---|---|" + ("---|" if device.type == "cuda" else "") + "---|---|---|")
    encoders: Dict[int, float] = {}
    for K in args.feature_dims:
        for k in sorted({4, K // 32, K // 2}):
            views = args.views or default_views(K, k)
            step = gate_step(views, K, k, device)
            counts = count(step, device)
            gate = timed(step, device, args.repeats)
            if views not in encoders:
                encoders[views] = timed(encoder_step("small_resnet", views, 28, 1, 128, 512, device), device,
                                        args.repeats)
            encoder = encoders[views]
            row = dict(K=K, k=k, views=views, **counts, gate_s=gate, encoder_s=encoder,
                       share=gate / (gate + encoder))
            results["rows"].append(row)
            print(f"| {K} | {k} | {views} | {counts['ops']:,}"
                  + (f" | {counts['kernels']:,}" if "kernels" in counts else "")
                  + f" | {gate * 1e3:.1f} | {encoder * 1e3:.0f} | {row['share']:.1%} |", flush=True)
    first = results["rows"][0]
    if args.quick:
        print(f"RESULT K {first['K']}, k {first['k']}: {first['ops']:,} aten ops per step")
        return results
    # the ImageNet-100 recipe's shapes
    K, k, views = 2048, 64, 16
    gate = timed(gate_step(views, K, k, device), device, args.repeats)
    encoder = timed(encoder_step("resnet18", views, 224, 3, K, 16384, device), device, max(1, args.repeats // 2))
    results["imagenet"] = dict(K=K, k=k, views=views, gate_s=gate, encoder_s=encoder, share=gate / (gate + encoder))
    print(f"\nImageNet-100 recipe's shapes (ResNet-18, 224 px, 16 views, K 2048, k 64): gate {gate * 1e3:.0f} ms, "
          f"encoder forward + backward {encoder * 1e3:.0f} ms: the gate is {gate / (gate + encoder):.1%} of "
          f"encoder + gate")
    # the budget anneal at K = 2048
    K, k, views = 2048, 64, args.anneal_views
    final = timed(gate_step(views, K, k, device), device, args.repeats)
    results["anneal"] = {"K": K, "k": k, "views": views, "final_s": final}
    for key, name, schedule, start in (("default", "default (linear from min(K, max(128, 3k)))", "linear", None),
                                       ("from_K", "linear from K (the anneal at K = 128)", "linear", K)):
        values = anneal_values(K, k, schedule, start, args.anneal_points)
        times = {kt: (timed(gate_step(views, K, kt, device), device, 1) if kt < K else 0.0)
                 for kt in sorted(set(values))}
        mean = statistics.fmean(times[kt] for kt in values)
        results["anneal"][key] = {"start": values[0], "mean_s": mean, "ratio": mean / final}
        print(f"anneal at K {K}, {views} views, {name}: k_t {values[0]} → {k}, mean {mean * 1e3:.0f} ms per step, "
              f"{mean / final:.2f}× the final k's {final * 1e3:.0f} ms")
    big = next((r for r in results["rows"] if (r["K"], r["k"]) == (2048, 64)), first)
    print(f"RESULT {big['ops']:,} aten ops per step at K {big['K']}, k {big['k']}"
          + (f" ({big['kernels']:,} kernels)" if "kernels" in big else "")
          + f"; {results['imagenet']['share']:.1%} of an ImageNet-size encoder step; anneal "
            f"{results['anneal']['default']['ratio']:.2f}x the final budget's step")
    if args.record:
        record(Path(args.record), results)
    return results


def record(path: Path, results: dict) -> None:
    """Append the table and the two checks to a results page as a dated entry (``pyro_ncl.results_page``)."""
    lines = ["| K | k | views | aten ops / step" + (" | kernels" if results["device"].startswith("cuda") else "")
             + " | gate ms / step | encoder ms (small_resnet, 28 px) | gate share |",
             "|---|---|---|---|" + ("---|" if results["device"].startswith("cuda") else "") + "---|---|---|"]
    lines += [f"| {r['K']} | {r['k']} | {r['views']} | {r['ops']:,}" + (f" | {r['kernels']:,}" if "kernels" in r
                                                                          else "")
              + f" | {r['gate_s'] * 1e3:.1f} | {r['encoder_s'] * 1e3:.0f} | {r['share']:.1%} |"
              for r in results["rows"]]
    im, an = results["imagenet"], results["anneal"]
    lines += ["", f"ImageNet-100 recipe's shapes (ResNet-18, 224 px, 16 views, K 2048, k 64): gate "
                  f"{im['gate_s'] * 1e3:.0f} ms, encoder forward + backward {im['encoder_s'] * 1e3:.0f} ms: "
                  f"{im['share']:.1%} of encoder + gate.",
              f"Budget anneal at K 2048, {an['views']} views: the default (linear from k_t "
              f"{an['default']['start']}) costs {an['default']['ratio']:.2f}× the final k's time per step on "
              f"average, the linear fall from K {an['from_K']['ratio']:.2f}×."]
    append_entry(path, "the exactly-k gate's cost per training step", lines, device=results["device"],
                 threads=None if results["device"].startswith("cuda") else results["threads"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--feature-dims", type=lambda s: [int(v) for v in s.split(",")], default=[128, 512, 2048],
                   help="values of K (default 128,512,2048)")
    p.add_argument("--views", type=int, default=None, help="views per step (default: 512 up to K 512, 256 at K "
                                                            "2048, 32 for its widest budget)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--anneal-points", type=int, default=20, help="fractions of the anneal timed")
    p.add_argument("--anneal-views", type=int, default=16, help="views of the anneal check (default 16)")
    p.add_argument("--record", default=None, metavar="PAGE.md", help="append a dated entry to this results page")
    p.add_argument("--quick", action="store_true", help="K = 128 only, one repeat, no ImageNet-size or anneal check "
                                                        "(the CPU form of experiments/device_check.sh)")
    return p


def cli(argv=None):
    return main(parser().parse_args(argv))
