"""Data parallelism: G processes with B/G images each give the objective and gradients of one process with B.

The equality check runs two gloo processes on the CPU (torch.multiprocessing spawn, one thread each) in float64.
Gate noise: the straight-through guide draws its Logistic noise per view with torch.rand, and one process draws
[2B, K] at once, so no per-rank seed reproduces the single-process draws of the same rows. The test instead
gives the guide a fixed noise table (``_FixedNoise``): the single process gets all 2B rows, rank r its own rows
(``local_view_rows``); everything else is the real default BayesNCL pipeline (encoder with synchronised
BatchNorm, amortized guide, closed-form KL in the subsampled views plate, gathered NT-Xent factor, gradient
all-reduce). triCL and BCL (ungated) are checked the same way, and a 2-process resume is checked to continue
exactly (per-rank RNG states in the checkpoint).
"""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import guides.exact_k
import guides.relaxed_st
from guides import GUIDES
from pyro_ncl import distributed
from pyro_ncl.checkpoint import load_checkpoint
from pyro_ncl.config import Config
from pyro_ncl.data.augment import BatchAugment
from pyro_ncl.data.base import ImageTensors, InMemoryData, local_train_batches, shard_size
from pyro_ncl.data.file_data import FolderData
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.distributions import StraightThroughBernoulli
from pyro_ncl.likelihoods import LIKELIHOODS, BCL, NTXent, TriCL
from pyro_ncl.system import build_system
from pyro_ncl.train import SVITrainer, seed_everything, train

from conftest import TINY_RUN_FLAGS  # tests/ is on sys.path (pytest's default prepend import mode)

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
OUTPUTS = {"config.json", "log.csv", "checkpoint.pt", "metrics.json", "loss.png"}
WORLD = 2
B, N, K = 8, 64, 8  # global batch, dataset size, feature dimension
# name -> settings: the default (exactly-k) gate, the sampled gate, and two plain methods
METHODS = {"bayesncl": dict(method="bayesncl"), "bayesncl_relaxed_st": dict(method="bayesncl", guide="relaxed_st"),
           "tricl": dict(method="tricl"), "bcl": dict(method="bcl", bcl_beta=0.7)}


# ---------------------------------------------------------------- single process: per-view forms and sharding
def _unit(z):
    return z / z.norm(dim=1, keepdim=True)


def nt_xent_views_by_hand(z, t):
    """[2B] −log(e^{c_ip/t} / Σ_{j≠i} e^{c_ij/t}) per anchor view i (c: cosines, p = i ± B), one loop per anchor."""
    n, u = z.shape[0], _unit(z)
    terms = []
    for i in range(n):
        others = torch.stack([u[i] @ u[j] / t for j in range(n) if j != i])
        terms.append(torch.logsumexp(others, 0) - u[i] @ u[(i + n // 2) % n] / t)
    return torch.stack(terms)


def bcl_views_by_hand(z, t, alpha, beta, tau_p):
    """[2B] BCL per anchor view (Liu & Wang): −log(s_p / (s_p + Σ_n ω_n s_n)), s = e^{c/t}, ω from the rank
    û = #{k ∈ N(i) : s_k ≤ s_n} / |N(i)| of each negative in its row (the quadratic root written out; ω carries no
    gradient)."""
    n, u = z.shape[0], _unit(z)
    tau_m = 1 - tau_p
    a = (1 - 2 * alpha) * (tau_m - tau_p) + 1e-3
    b = 2 * (alpha * tau_m + (1 - alpha) * tau_p)
    terms = []
    for i in range(n):
        p = (i + n // 2) % n
        negatives = [j for j in range(n) if j not in (i, p)]
        s = {j: torch.exp(u[i] @ u[j] / t) for j in [p, *negatives]}
        total = s[p]
        for j in negatives:
            rank = sum(float(s[k].detach()) <= float(s[j].detach()) for k in negatives) / len(negatives)
            cdf = (-b + math.sqrt(b * b + 4 * a * rank)) / (2 * a)
            phi1, phi2 = 2 * (1 - cdf), 2 * cdf
            x_tn, x_fn = alpha * phi1 + (1 - alpha) * phi2, (1 - alpha) * phi1 + alpha * phi2
            x_htn = (alpha * (1 - beta) * phi1 + (1 - alpha) * beta * phi2) / (alpha * (1 - beta) + (1 - alpha) * beta)
            total = total + x_htn / (tau_m * x_tn + tau_p * x_fn) * s[j]
        terms.append(-torch.log(s[p] / total))
    return torch.stack(terms)


def tricl_views_by_hand(z, theta, t, decorrelation=1.0, symmetric=True):
    """[2B] triCL per anchor view: NT-Xent on (u_i ⊙ softplus(θ))·u_j / t (view-2 anchors unscaled when not
    ``symmetric``), plus the batch's decorrelation penalty mean_{d,e} (UᵀU/2B − I)²_{de} added to every view."""
    n, k = z.shape
    u = _unit(z)
    scale = torch.log1p(torch.exp(theta))
    penalty = sum((sum(u[v, d] * u[v, e] for v in range(n)) / n - float(d == e)) ** 2
                  for d in range(k) for e in range(k)) / (k * k)
    terms = []
    for i in range(n):
        anchor = u[i] * scale if symmetric or i < n // 2 else u[i]
        others = torch.stack([anchor @ u[j] / t for j in range(n) if j != i])
        terms.append(torch.logsumexp(others, 0) - anchor @ u[(i + n // 2) % n] / t + decorrelation * penalty)
    return torch.stack(terms)


def _by_hand(lik, z):
    if isinstance(lik, NTXent):
        return nt_xent_views_by_hand(z, lik.temperature)
    if isinstance(lik, BCL):
        return bcl_views_by_hand(z, lik.temperature, lik.alpha, lik.beta, lik.class_prior)
    return tricl_views_by_hand(z, lik.theta, lik.temperature, lik.decorrelation, lik.symmetric)


@pytest.mark.parametrize("lik", [NTXent(0.3), BCL(0.4, 0.8, 0.6, 0.1), TriCL(K, 0.3), TriCL(K, 0.3, symmetric=False)],
                         ids=["nt_xent", "bcl", "tricl", "tricl_asym"])
def test_per_view_losses_and_gradients_match_a_hand_written_loss(lik):
    """Each per-view term (all rows, and a subset of rows: what a process of a data-parallel run asks for), the
    loss (their mean) and its gradient in z and in triCL's θ against a per-anchor loop written from the papers'
    formulas, in float64."""
    lik = lik.double()
    z = torch.rand(12, K, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    want = _by_hand(lik, z)
    full = lik.per_view(z)
    assert full.shape == (12,)
    torch.testing.assert_close(full, want, rtol=0, atol=1e-12)
    assert float(want.detach().std()) > 0.01  # the views differ: a row mix-up would show
    rows = torch.tensor([7, 1, 10])
    torch.testing.assert_close(lik.per_view(z, rows=rows), want[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(lik(z), want.mean(), rtol=0, atol=1e-12)
    params = [z, *lik.parameters()]
    expected_grads = torch.autograd.grad(want.mean(), params, retain_graph=True)
    for got, expected in zip(torch.autograd.grad(lik(z), params), expected_grads):
        assert float(expected.abs().max()) > 1e-3
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    row_grads = torch.autograd.grad(lik.per_view(z, rows=rows).sum(), params)
    for got, expected in zip(row_grads, torch.autograd.grad(want[rows].sum(), params)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _memory_data(n=32, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=g)
    split = ImageTensors(images, labels)
    return InMemoryData("random", split, split, num_classes=4, mean=[0.5], std=[0.25], augment=BatchAugment(size))


def _cat_shards(shards):
    return [torch.cat(parts) for parts in zip(*shards)]


def test_shards_of_in_memory_batches_are_the_global_batch():
    data = _memory_data()
    whole = list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=1))
    for world in (2, 4):
        shards = [list(data.train_batches(8, epoch=1, seed=3, device="cpu", start_step=1, rank=r, world_size=world))
                  for r in range(world)]
        for step, batch in enumerate(whole):
            for got, want in zip(_cat_shards([s[step] for s in shards]), batch):
                assert torch.equal(got, want)
    with pytest.raises(ValueError, match="--batch-size 8 is not divisible by the 3 processes"):
        next(data.train_batches(8, 0, 0, "cpu", rank=0, world_size=3))


def test_generic_sharding_slices_datasets_without_rank_support():
    data = _memory_data()

    class Plain(InMemoryData):  # a dataset whose train_batches knows nothing of ranks (e.g. STL-10)
        def train_batches(self, batch_size, epoch, seed, device, start_step=0):
            return InMemoryData.train_batches(self, batch_size, epoch, seed, device, start_step)

    plain = Plain.__new__(Plain)
    plain.__dict__.update(data.__dict__)
    whole = next(data.train_batches(8, 0, 5, "cpu"))
    shards = [next(local_train_batches(plain, 8, 0, 5, "cpu", rank=r, world_size=2)) for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(_cat_shards(shards), whole))
    assert shard_size(8, 2) == 4


def test_shards_of_folder_batches_are_the_global_batch(tmp_path):
    import torchvision.transforms as T
    samples = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)
        samples.append((str(path), i % 3))
    train_t = T.Compose([T.RandomResizedCrop(8, antialias=True), T.ToTensor()])
    data = FolderData("files", samples, samples, 3, train_t, T.Compose([T.Resize(8), T.ToTensor()]), image_size=8)
    whole = list(data.train_batches(4, epoch=2, seed=1, device="cpu"))
    shards = [list(data.train_batches(4, epoch=2, seed=1, device="cpu", rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(whole) == 3
    for step, batch in enumerate(whole):
        assert all(torch.equal(a, b) for a, b in zip(_cat_shards([s[step] for s in shards]), batch))


def test_what_data_parallelism_refuses():
    check = distributed.check_supported
    with pytest.raises(ValueError, match="--batch-size 10 is not divisible by the 4 processes"):
        check(Config(batch_size=10).resolved(), size=4)
    with pytest.raises(ValueError, match="--likelihood simlap has no per-view form"):
        check(Config(method="simlap").resolved(), LIKELIHOODS["simlap"], GUIDES["none"], size=2)
    with pytest.raises(ValueError, match="--guide bernoulli uses score-function gradients"):
        check(Config(guide="bernoulli").resolved(), LIKELIHOODS["nt_xent"], GUIDES["bernoulli"], size=2)
    with pytest.raises(ValueError, match="--guide global samples one global gate"):
        check(Config(guide="global").resolved(), LIKELIHOODS["nt_xent"], GUIDES["global"], size=2)
    for method in ("bayesncl", "cl", "ncl", "tricl", "bcl"):
        config = Config(method=method).resolved()
        check(config, LIKELIHOODS[config.likelihood], GUIDES[config.guide], size=2)
    check(Config(batch_size=10, method="simlap").resolved(), LIKELIHOODS["simlap"], GUIDES["none"], size=1)


# ---------------------------------------------------------------- two processes against one
class _FixedNoise(StraightThroughBernoulli):
    """The straight-through sample with given uniforms instead of torch.rand (same formula)."""
    uniforms = None

    def rsample(self, sample_shape=torch.Size()):
        return self.from_uniforms(self.uniforms.to(self.logits))


class _FixedDraw(ConditionalBernoulli):
    """The exactly-k draw with given uniforms (one per internal node of its tree: the table's first K − 1 columns
    for K = 8) instead of torch.rand (same sampler)."""
    uniforms = None

    def sample(self, sample_shape=torch.Size()):
        return self.from_uniforms(self.uniforms[..., :self.num_uniforms].to(self.logits))


def _fix_noise(uniforms):
    """Both samplers of the gated methods draw from ``uniforms`` [views, K]."""
    _FixedNoise.uniforms = _FixedDraw.uniforms = uniforms
    guides.relaxed_st.StraightThroughBernoulli, guides.exact_k.ConditionalBernoulli = _FixedNoise, _FixedDraw


def _unfix_noise():
    guides.relaxed_st.StraightThroughBernoulli, guides.exact_k.ConditionalBernoulli = (StraightThroughBernoulli,
                                                                                      ConditionalBernoulli)


def _config(name, **extra):
    return Config(width=4, hidden_dim=16, feature_dim=K, batch_size=B, epochs=1, **METHODS[name], **extra).resolved()


def _gradients(method, state, inputs, rows):
    """Loss, statistics, gradients and BatchNorm buffers after one ``loss_and_grads`` of the (local) batch."""
    pyro.clear_param_store()
    config = _config(method)
    system = build_system(config, in_channels=1, num_classes=4).double()
    distributed.convert_batchnorm(system.encoder, torch.device("cpu"))
    system.load_state_dict(state[method])
    _fix_noise(inputs["noise"][rows])
    trainer = SVITrainer(system, config, steps_per_epoch=10)
    x1, x2, y, index = (inputs[k][rows[:len(rows) // 2]] for k in ("x1", "x2", "y", "index"))
    loss = trainer.loss_and_grads(x1, x2, y, index, num_images=N)
    grads = {name: p.grad.clone() for name, p in system.named_parameters() if p.grad is not None}
    buffers = {name: b.clone() for name, b in system.named_buffers()}
    return dict(loss=loss, stats=trainer.step_stats(), grads=grads, buffers=buffers,
                no_grad=sorted(name for name, p in system.named_parameters() if p.grad is None))


def _reference(tmp_path):
    torch.manual_seed(0)
    state = {m: build_system(_config(m), in_channels=1, num_classes=4).double().state_dict() for m in METHODS}
    g = torch.Generator().manual_seed(1)
    inputs = dict(x1=torch.randn(B, 1, 16, 16, generator=g, dtype=torch.float64),
                  x2=torch.randn(B, 1, 16, 16, generator=g, dtype=torch.float64),
                  y=torch.randint(0, 4, (B,), generator=g), index=torch.randperm(N, generator=g)[:B],
                  noise=torch.rand(2 * B, K, generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6))
    torch.save(dict(state=state, inputs=inputs), tmp_path / "inputs.pt")
    return state, inputs


def _resume_run(out, config, data, state=None):
    pyro.clear_param_store()
    seed_everything(config.seed)
    system = build_system(config, in_channels=1, num_classes=4)
    distributed.convert_batchnorm(system.encoder, torch.device("cpu"))
    distributed.broadcast_module(system)
    distributed.seed_rank(config.seed)
    train(system, data, config, out, torch.device("cpu"), resume=state, progress=False)


def _worker(rank, port, tmp):
    tmp = Path(tmp)
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    distributed.setup_local(rank, WORLD, port)
    try:
        saved = torch.load(tmp / "inputs.pt", weights_only=True)
        rows = distributed.local_view_rows(B // WORLD)
        results = {m: _gradients(m, saved["state"], saved["inputs"], rows) for m in METHODS}
        if rank == 0:
            torch.save(results, tmp / "ddp.pt")
        _unfix_noise()
        # resume: 2 epochs straight through, against epoch 2 resumed from the epoch-1 checkpoint
        config = Config(method="bayesncl", width=4, hidden_dim=16, feature_dim=K, batch_size=B, epochs=2,
                        checkpoint_every=0, log_every=1).resolved()
        data = _memory_data()
        for name in ("straight", "resumed"):
            (tmp / name).mkdir(exist_ok=True)
        _resume_run(tmp / "straight", config, data)
        distributed.barrier()
        if rank == 0:
            shutil.copy(tmp / "straight" / "log.csv", tmp / "resumed" / "log.csv")
        distributed.barrier()
        _resume_run(tmp / "resumed", config, data, state=load_checkpoint(tmp / "straight" / "checkpoint.prev.pt"))
        distributed.barrier()
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    pyro.clear_param_store()
    state, inputs = _reference(tmp)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_worker, args=(distributed.free_port(), str(tmp)), nprocs=WORLD, join=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return tmp, state, inputs


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_give_the_single_process_objective_and_gradients(two_processes, method, monkeypatch):
    tmp, state, inputs = two_processes
    try:
        one = _gradients(method, state, inputs, torch.arange(2 * B))
    finally:
        _unfix_noise()
    two = torch.load(tmp / "ddp.pt", weights_only=False)[method]
    assert abs(one["loss"] - two["loss"]) < 1e-5, (one["loss"], two["loss"])
    assert one["stats"].keys() == two["stats"].keys()
    for key in one["stats"]:
        assert abs(one["stats"][key] - two["stats"][key]) < 1e-5, key
    assert one["grads"].keys() == two["grads"].keys() and one["no_grad"] == two["no_grad"]
    parts = {name.split(".")[0] for name in one["grads"]}
    assert "encoder" in parts
    guide_params = [name for name in [*one["grads"], *one["no_grad"]] if name.startswith("guide.")]
    assert all(name in one["grads"] for name in guide_params)  # the sampled gate's head learns in both
    assert guide_params or method != "bayesncl_relaxed_st"
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=0, atol=1e-5, msg=name)
        # a real check, not zeros against zeros (the exact_k head's last layer starts at 0: its first layer gets no
        # gradient at the first step)
        assert grad.abs().max() > 0 or "bias" in name or name.startswith("guide.head.0."), name
    for name, buf in one["buffers"].items():  # synchronised BatchNorm: the same running statistics
        torch.testing.assert_close(two["buffers"][name], buf, rtol=0, atol=1e-8, msg=name)


def test_two_process_resume_continues_exactly(two_processes):
    tmp = two_processes[0]
    straight = load_checkpoint(tmp / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp / "resumed" / "checkpoint.pt")
    assert straight["world_size"] == 2 and len(straight["rng_ranks"]) == 2
    assert not torch.equal(straight["rng_ranks"][0]["torch"], straight["rng_ranks"][1]["torch"])
    for name, value in straight["system"].items():
        assert torch.equal(resumed["system"][name], value), name
    with open(tmp / "straight" / "log.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(1, 9))  # one row per step, written once (rank 0)


# ---------------------------------------------------------------- torchrun, end to end
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_torchrun_two_processes_write_one_set_of_outputs(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "experiments" / "run_svi.py"),
               *TINY_RUN_FLAGS, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [name for name in os.listdir(out) if name.startswith("events.out.tfevents.")]
    assert set(os.listdir(out)) - set(events) == OUTPUTS
    # rank 0 alone (one pid): the training's event file and the final metrics'
    assert len(events) == 2 and len({name.split(".")[-2] for name in events}) == 1
    assert result.stderr.count("epoch 1/1 done") == 1 and result.stderr.count("evaluating") == 1  # rank 0 prints
    assert result.stdout.count("2 processes") == 1 and result.stdout.count('"knn_accuracy"') == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 < metrics["knn_accuracy"] <= 1.0
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 4
