#!/usr/bin/env python
"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times and the ratio SVI / plain
    python experiments/bench_step.py --amp bf16 --channels-last --device cuda
                                                     # also times the fp32 SVI step: ratio with / without

With --amp/--channels-last/--compile both the SVI and the plain step use them (``system.accelerate``: autocast
of the encoder only); the unaccelerated SVI step is timed alongside, interleaved in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

from pyro_ncl.config import Config
from pyro_ncl.distributions import StraightThroughBernoulli, bernoulli_kl
from pyro_ncl.likelihoods import nt_xent
from pyro_ncl.ops import safe_normalize
from pyro_ncl.system import ContrastiveSystem, accelerate, build_system
from pyro_ncl.train import SVITrainer, resolve_device


def plain_step(system: ContrastiveSystem, config: Config, optimizer, x1, x2) -> float:
    """The BayesNCL objective per view, by hand: NT-Xent on the gated features + β · KL per view."""
    encoded = system.encode(x1, x2, None, 0)  # the encoder once on both views (with the system's amp settings)
    h, z = encoded.h, encoded.z
    features = safe_normalize(z)
    loss = 0.0
    if system.gated:
        logits = system.guide.logits(h)
        gate = StraightThroughBernoulli(logits, config.gate_temperature).rsample()
        features = safe_normalize(features * gate)
        loss = config.kl_weight * bernoulli_kl(logits, torch.tensor(config.prior_prob)).sum(-1).mean()
    loss = loss + nt_xent(features, config.temperature)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(args):
    device = resolve_device(args.device)
    config = Config(method=args.method, batch_size=args.batch_size, width=args.width,
                    backbone=args.backbone).resolved()
    torch.manual_seed(0)
    accelerated = args.amp != "none" or args.channels_last or args.compile
    names = ("svi", "plain", "svi_fp32") if accelerated else ("svi", "plain")
    systems = {name: build_system(config, args.channels, device=device) for name in names}
    for name in names[1:]:
        systems[name].load_state_dict(systems["svi"].state_dict())
    for name in ("svi", "plain"):
        accelerate(systems[name], args.amp, args.channels_last, args.compile)
    trainers = {name: SVITrainer(systems[name], config, steps_per_epoch=10 ** 6) for name in names if name != "plain"}
    optimizer = torch.optim.SGD(systems["plain"].parameter_groups(config.lr, config.gate_lr, config.weight_decay),
                                momentum=config.momentum)
    x1, x2 = (torch.randn(args.batch_size, args.channels, args.size, args.size, device=device) for _ in range(2))
    index, labels = torch.arange(args.batch_size, device=device), torch.zeros(args.batch_size, dtype=torch.long)
    steps = {name: (lambda t=trainer: t.step(x1, x2, labels, index, num_images=60000))
             for name, trainer in trainers.items()}
    steps["plain"] = lambda: plain_step(systems["plain"], config, optimizer, x1, x2)
    times = {name: [] for name in steps}
    for repeat in range(args.warmup + args.repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    svi, plain = statistics.median(times["svi"]), statistics.median(times["plain"])
    settings = f"amp {args.amp}, channels-last {args.channels_last}, compile {args.compile}"
    print(f"device {device}, {args.method}, {args.backbone} (width {args.width}), batch {args.batch_size} images "
          f"of {args.channels}x{args.size}x{args.size}, {args.repeats} interleaved repeats; {settings}")
    print(f"median step: SVI {svi * 1e3:.1f} ms, plain PyTorch {plain * 1e3:.1f} ms")
    print(f"ratio SVI / plain: {svi / plain:.3f} (goal <= 1.05)")
    if accelerated:
        fp32 = statistics.median(times["svi_fp32"])
        print(f"median step: SVI without these settings {fp32 * 1e3:.1f} ms; speed-up {fp32 / svi:.2f}x "
              f"(ratio with / without {svi / fp32:.3f}), {args.batch_size / svi:.0f} vs {args.batch_size / fp32:.0f} "
              f"images/s")
    return svi / plain


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="bayesncl")
    parser.add_argument("--backbone", default="small_resnet")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast of the encoder")
    parser.add_argument("--channels-last", action="store_true", help="channels-last encoder weights and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    pyro.enable_validation(False)
    main(parser.parse_args())
