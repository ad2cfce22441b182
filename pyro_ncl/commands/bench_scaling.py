"""Data parallelism on the CPU: 1 process against 2 (gloo), side by side in one run.

    OMP_NUM_THREADS=1 python experiments/bench_scaling.py                 # prints three blocks:

1. equality: one ``loss_and_grads`` of the same global batch by 1 and by 2 processes (2 × B/2 images each), in
   float64 and float32: max |difference| of the loss and of every gradient (encoder, gate head). The gates use a
   fixed noise table (rank r gets its rows), so that both runs draw the same gates;
2. throughput: images/s of SVI training steps at the same global batch, 1 process then 2 (alternating
   ``--rounds`` times; each process with ``--threads`` threads), and the speed-up;
3. memory: peak resident memory (``resource.getrusage(...).ru_maxrss``) of a process that runs one default-sized
   step (the default Config: small_resnet width 16, batch 256, K 128, 1×28×28 images), and of the processes above.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.multiprocessing as mp

import guides.relaxed_st
from pyro_ncl import distributed
from pyro_ncl.config import Config
from pyro_ncl.distributions import StraightThroughBernoulli
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer

NUM_IMAGES = 60_000


class FixedNoise(StraightThroughBernoulli):
    """The straight-through gate with given uniforms (the same formula as ``rsample``)."""
    uniforms = None

    def rsample(self, sample_shape=torch.Size()):
        return self.from_uniforms(self.uniforms.to(self.logits))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _config(args, batch_size=None) -> Config:
    return Config(method=args.method, width=args.width, hidden_dim=args.hidden_dim, feature_dim=args.feature_dim,
                  batch_size=batch_size or args.batch_size, epochs=1).resolved()


def _system(config, dtype, seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    system = build_system(config, in_channels=1, num_classes=10).to(dtype)
    distributed.convert_batchnorm(system.encoder, torch.device("cpu"))
    distributed.broadcast_module(system)
    return system


def _inputs(config, size, dtype):
    g = torch.Generator().manual_seed(1)
    b = config.batch_size
    return dict(x1=torch.randn(b, 1, size, size, generator=g).to(dtype),
                x2=torch.randn(b, 1, size, size, generator=g).to(dtype),
                y=torch.zeros(b, dtype=torch.long), index=torch.randperm(NUM_IMAGES, generator=g)[:b],
                noise=torch.rand(2 * b, config.feature_dim, generator=g).to(dtype).clamp(1e-6, 1 - 1e-6))


def equality_task(args, dtype):
    """Loss and gradients of one loss_and_grads of the global batch, on this process's shard."""
    config = _config(args)
    system = _system(config, dtype)
    inputs = _inputs(config, args.size, dtype)
    b = config.batch_size // distributed.world_size()
    rows = distributed.local_view_rows(b)
    guides.relaxed_st.StraightThroughBernoulli = FixedNoise
    FixedNoise.uniforms = inputs["noise"][rows]
    try:
        trainer = SVITrainer(system, config, steps_per_epoch=10)
        images = rows[:b]
        loss = trainer.loss_and_grads(inputs["x1"][images], inputs["x2"][images], inputs["y"][images],
                                      inputs["index"][images], NUM_IMAGES)
    finally:
        guides.relaxed_st.StraightThroughBernoulli = StraightThroughBernoulli
    return dict(loss=loss, grads={n: p.grad.double() for n, p in system.named_parameters() if p.grad is not None})


def throughput_task(args):
    """Seconds per SVI step (median over ``--steps`` after ``--warmup``) at the global batch size."""
    config = _config(args)
    system = _system(config, torch.float32)
    inputs = _inputs(config, args.size, torch.float32)
    b = config.batch_size // distributed.world_size()
    images = distributed.local_view_rows(b)[:b]
    x1, x2, y, index = (inputs[k][images] for k in ("x1", "x2", "y", "index"))
    trainer = SVITrainer(system, config, steps_per_epoch=10 ** 6)
    times = []
    for step in range(args.warmup + args.steps):
        distributed.barrier()
        start = time.perf_counter()
        trainer.step(x1, x2, y, index, NUM_IMAGES)
        distributed.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return dict(seconds=statistics.median(times))


def memory_task(args):
    """One default-sized SVI step (the default Config), for the peak resident memory of its process."""
    config = Config().resolved()
    system = _system(config, torch.float32)
    inputs = _inputs(config, 28, torch.float32)
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    before = peak_rss_mib()
    trainer.step(inputs["x1"], inputs["x2"], inputs["y"], inputs["index"], NUM_IMAGES)
    return dict(batch_size=config.batch_size, width=config.width, feature_dim=config.feature_dim,
                rss_before_mib=before)


def _worker(rank, world, port, task, args, out):
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    distributed.setup_local(rank, world, port)
    try:
        if task == "equality":
            result = {str(dtype): equality_task(args, dtype) for dtype in (torch.float64, torch.float32)}
        elif task == "throughput":
            result = throughput_task(args)
        else:
            result = memory_task(args)
        result["peak_rss_mib"] = peak_rss_mib()
        torch.save(result, Path(out) / f"{task}-{world}-{rank}.pt")
    finally:
        distributed.cleanup()


def launch(task, world, args, out):
    mp.spawn(_worker, args=(world, distributed.free_port(), task, args, out), nprocs=world, join=True)
    return [torch.load(Path(out) / f"{task}-{world}-{r}.pt", weights_only=False) for r in range(world)]


def main(args):
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned processes
    print(f"{args.method}, small_resnet width {args.width}, hidden {args.hidden_dim}, K {args.feature_dim}, global "
          f"batch {args.batch_size} of 1x{args.size}x{args.size}; CPU, gloo, {args.threads} thread(s) per process")
    with tempfile.TemporaryDirectory() as out:
        one, two = launch("equality", 1, args, out)[0], launch("equality", 2, args, out)[0]
        print("1. objective and gradients, 1 process vs 2 (same global batch, same gates):")
        for dtype in (str(torch.float64), str(torch.float32)):
            loss = abs(one[dtype]["loss"] - two[dtype]["loss"])
            grads = max((one[dtype]["grads"][n] - g).abs().max().item() for n, g in two[dtype]["grads"].items())
            scale = max(g.abs().max().item() for g in one[dtype]["grads"].values())
            same = one[dtype]["grads"].keys() == two[dtype]["grads"].keys()
            print(f"   {dtype}: loss {one[dtype]['loss']:.6f}, max |Δloss| {loss:.2e}; max |Δgrad| {grads:.2e} "
                  f"(largest |grad| {scale:.2e}, {len(one[dtype]['grads'])} tensors, same set: {same})")
        rates = {1: [], 2: []}
        peaks = {1: 0.0, 2: 0.0}
        for _ in range(args.rounds):
            for world in (1, 2):
                results = launch("throughput", world, args, out)
                rates[world].append(args.batch_size / max(r["seconds"] for r in results))
                peaks[world] = max(peaks[world], *(r["peak_rss_mib"] for r in results))
        r1, r2 = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"2. throughput (median of {args.rounds} alternating rounds of {args.steps} steps): 1 process "
              f"{r1:.0f} images/s, 2 processes {r2:.0f} images/s; speed-up {r2 / r1:.2f}x "
              f"(rounds: 1 → {', '.join(f'{r:.0f}' for r in rates[1])}; 2 → {', '.join(f'{r:.0f}' for r in rates[2])})")
        memory = launch("memory", 1, args, out)[0]
        print(f"3. peak resident memory: one default-sized step (batch {memory['batch_size']}, width "
              f"{memory['width']}, K {memory['feature_dim']}): {memory['peak_rss_mib']:.0f} MiB "
              f"({memory['rss_before_mib']:.0f} MiB before the step); throughput runs: 1 process "
              f"{peaks[1]:.0f} MiB, 2 processes {peaks[2]:.0f} MiB each at most")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="bayesncl", choices=["bayesncl", "cl", "ncl", "tricl", "bcl"])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (B/2 per process with 2)")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser


def cli(argv=None):
    return main(parser().parse_args(argv))
