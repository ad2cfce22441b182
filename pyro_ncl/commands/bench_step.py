"""Time one SVI training step (TraceGraph_ELBO.loss_and_grads + SGD) against the same step written in plain
PyTorch (same encoder, gate head, straight-through sample, loss and optimiser), and against a plain-PyTorch
SimCLR step (the same encoder and projector, NT-Xent, no gate), interleaved in one run.

    python experiments/bench_step.py                 # prints the median times, SVI / plain and SVI / SimCLR
    python experiments/bench_step.py --amp bf16 --channels-last --device cuda
                                                     # also times the fp32 SVI step: ratio with / without
    python experiments/bench_step.py --backbone resnet18 --no-cifar-stem --channels 3 --size 224 --batch-size 128 \
        --hidden-dim 16384 --feature-dim 2048 --device cuda           # ImageNet-100-sized (the preset's model)

With --amp/--channels-last/--compile the SVI, plain and SimCLR steps use them (``system.accelerate``: autocast
of the encoder only); the unaccelerated SVI step is timed alongside, interleaved in the same run. The back-ends
are set as ``run_svi`` sets them (cuDNN benchmark and TF32 on CUDA unless --deterministic). Every tensor of a step
(images, indices, labels) is made on --device.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

from pyro_ncl.backends import set_backends
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
        prior = torch.full((), config.prior_prob, device=logits.device)  # a fill on the device: no host copy
        loss = config.kl_weight * bernoulli_kl(logits, prior).sum(-1).mean()
    loss = loss + nt_xent(features, config.temperature)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_inputs(batch_size: int, channels: int, size: int, device, num_classes: int = 10):
    """Random views x1, x2 [B, C, S, S], dataset indices [B] and labels [B] (classes i % num_classes, so that a
    supervised likelihood has positives and negatives), all on ``device``."""
    x1, x2 = (torch.randn(batch_size, channels, size, size, device=device) for _ in range(2))
    index = torch.arange(batch_size, device=device)
    return x1, x2, index, index % num_classes


def _optimizer(system: ContrastiveSystem, config: Config) -> torch.optim.Optimizer:
    return torch.optim.SGD(system.parameter_groups(config.lr, config.gate_lr, config.weight_decay),
                           momentum=config.momentum)


def main(args):
    device = resolve_device(args.device)
    set_backends(device, args.deterministic)
    settings = dict(batch_size=args.batch_size, width=args.width, backbone=args.backbone, cifar_stem=args.cifar_stem,
                    hidden_dim=args.hidden_dim, feature_dim=args.feature_dim)
    config = Config(method=args.method, guide=args.guide if args.method == "bayesncl" else None, **settings).resolved()
    simclr_config = Config(method="cl", **settings).resolved()
    torch.manual_seed(0)
    accelerated = args.amp != "none" or args.channels_last or args.compile
    names = ("svi", "plain", "simclr", "svi_fp32") if accelerated else ("svi", "plain", "simclr")
    systems = {name: build_system(simclr_config if name == "simclr" else config, args.channels, device=device)
               for name in names}
    for name in names[1:]:
        systems[name].load_state_dict(systems["svi"].state_dict(), strict=name != "simclr")  # SimCLR: no gate head
    for name in ("svi", "plain", "simclr"):
        accelerate(systems[name], args.amp, args.channels_last, args.compile)
    trainers = {name: SVITrainer(systems[name], config, steps_per_epoch=10 ** 6) for name in ("svi", "svi_fp32")
                if name in names}
    optimizers = {name: _optimizer(systems[name], config) for name in ("plain", "simclr")}
    x1, x2, index, labels = step_inputs(args.batch_size, args.channels, args.size, device)
    steps = {name: (lambda t=trainer: t.step(x1, x2, labels, index, num_images=60000))
             for name, trainer in trainers.items()}
    steps["plain"] = lambda: plain_step(systems["plain"], config, optimizers["plain"], x1, x2)
    steps["simclr"] = lambda: plain_step(systems["simclr"], simclr_config, optimizers["simclr"], x1, x2)
    times = {name: [] for name in steps}
    for repeat in range(args.warmup + args.repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    svi, plain, simclr = (statistics.median(times[name]) for name in ("svi", "plain", "simclr"))
    flags = f"amp {args.amp}, channels-last {args.channels_last}, compile {args.compile}"
    print(f"device {device}, {args.method}, {args.backbone} (width {args.width}, projector {args.hidden_dim}/"
          f"{args.feature_dim}), batch {args.batch_size} images of {args.channels}x{args.size}x{args.size}, "
          f"{args.repeats} interleaved repeats; {flags}")
    print(f"median step: SVI {svi * 1e3:.1f} ms, plain PyTorch {plain * 1e3:.1f} ms, "
          f"plain SimCLR {simclr * 1e3:.1f} ms")
    print(f"ratio SVI / plain: {svi / plain:.3f} (goal <= 1.05)")
    print(f"images/s: SVI {args.batch_size / svi:.0f}, plain SimCLR {args.batch_size / simclr:.0f}; "
          f"ratio SVI / SimCLR time: {svi / simclr:.3f} (target <= 1.10)")
    if accelerated:
        fp32 = statistics.median(times["svi_fp32"])
        print(f"median step: SVI without these settings {fp32 * 1e3:.1f} ms; speed-up {fp32 / svi:.2f}x "
              f"(ratio with / without {svi / fp32:.3f}), {args.batch_size / svi:.0f} vs {args.batch_size / fp32:.0f} "
              f"images/s")
    return svi / plain


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="bayesncl")
    parser.add_argument("--guide", default="relaxed_st", choices=["relaxed_st"],
                        help="bayesncl's gate: the sampled gate with a head, the one the plain step writes by hand "
                             "(the default top-k gate has no head and no sampling)")
    parser.add_argument("--backbone", default="small_resnet")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--hidden-dim", type=int, default=Config.hidden_dim, help="projector and gate head width")
    parser.add_argument("--feature-dim", type=int, default=Config.feature_dim, help="K")
    parser.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=Config.cifar_stem,
                        help="torchvision ResNets: 3x3 stride-1 stem (--no-cifar-stem for 224 px)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast of the encoder")
    parser.add_argument("--channels-last", action="store_true", help="channels-last encoder weights and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument("--deterministic", action="store_true", help="no cuDNN benchmark, no TF32 (as run_svi)")
    return parser


def cli(argv=None):
    pyro.enable_validation(False)
    return main(parser().parse_args(argv))
