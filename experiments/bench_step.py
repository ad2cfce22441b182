#!/usr/bin/env python
"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times and the ratio SVI / plain
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
from pyro_ncl.system import ContrastiveSystem, build_system
from pyro_ncl.train import SVITrainer, resolve_device


def plain_step(system: ContrastiveSystem, config: Config, optimizer, x1, x2) -> float:
    """The BayesNCL objective per view, by hand: NT-Xent on the gated features + β · KL per view."""
    h, z = system.encoder(torch.cat([x1, x2]))
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
    systems = {name: build_system(config, args.channels, device=device) for name in ("svi", "plain")}
    systems["plain"].load_state_dict(systems["svi"].state_dict())
    trainer = SVITrainer(systems["svi"], config, steps_per_epoch=10 ** 6)
    optimizer = torch.optim.SGD(systems["plain"].parameter_groups(config.lr, config.gate_lr, config.weight_decay),
                                momentum=config.momentum)
    x1, x2 = (torch.randn(args.batch_size, args.channels, args.size, args.size, device=device) for _ in range(2))
    index, labels = torch.arange(args.batch_size, device=device), torch.zeros(args.batch_size, dtype=torch.long)
    steps = {"svi": lambda: trainer.step(x1, x2, labels, index, num_images=60000),
             "plain": lambda: plain_step(systems["plain"], config, optimizer, x1, x2)}
    times = {name: [] for name in steps}
    for repeat in range(args.warmup + args.repeats):
        for name in (("svi", "plain") if repeat % 2 == 0 else ("plain", "svi")):
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    svi, plain = statistics.median(times["svi"]), statistics.median(times["plain"])
    print(f"device {device}, {args.method}, {args.backbone} (width {args.width}), batch {args.batch_size} images "
          f"of {args.channels}x{args.size}x{args.size}, {args.repeats} interleaved repeats")
    print(f"median step: SVI {svi * 1e3:.1f} ms, plain PyTorch {plain * 1e3:.1f} ms")
    print(f"ratio SVI / plain: {svi / plain:.3f} (goal <= 1.05)")
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
    pyro.enable_validation(False)
    main(parser.parse_args())
