"""``exact_k_aux``: the exactly-k gate with an auxiliary top-k term on dead dimensions (CSR's aux-k), checked
against an independent computation: the idle counts by hand, the aux mask by sorting, the extra loss by a
cross-entropy written out, and the gradient's reach (the encoder, never the gate head)."""
import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceGraph_ELBO

from pyro_ncl.config import Config
from pyro_ncl.system import build_system

K, PI = 16, 0.125  # k = 2 of 16


def system_of(guide, **settings):
    config = Config(method="bayesncl", guide=guide, prior_prob=PI, width=2, hidden_dim=8, feature_dim=K,
                    budget_anneal_epochs=0, **settings).resolved().validate()
    torch.manual_seed(0)
    return build_system(config, in_channels=1).train()


def batch_of(system, num_images=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(num_images, 1, 28, 28, generator=g), torch.randn(num_images, 1, 28, 28, generator=g)
    return system.encode(x1, x2, torch.arange(num_images), num_images=100)


def independent_nt_xent(z, tau):
    """z [2B, K] → mean over views of −log softmax over the other views at the positive (i ↔ i + B)."""
    zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = zn @ zn.T / tau
    sim.fill_diagonal_(float("-inf"))
    n = z.shape[0]
    return F.cross_entropy(sim, (torch.arange(n) + n // 2) % n)


def test_idle_counts_and_dead_dimensions():
    guide = system_of("exact_k_aux", aux_dead_steps=3).guide
    rng = np.random.default_rng(0)
    idle = np.zeros(K, dtype=int)
    for _ in range(12):
        gate = torch.tensor((rng.random((5, K)) < 0.08).astype(np.float32))
        guide.track(gate)
        opened = gate.numpy().any(0)
        idle = np.where(opened, 0, idle + 1)
        assert guide.idle_steps.tolist() == idle.tolist()
        assert guide.dead().tolist() == (idle >= 3).tolist()
    assert 0 < int(guide.dead().sum()) < K  # both kinds occurred
    assert "idle_steps" in guide.state_dict()  # checkpointed: a resumed run keeps its dead set


def test_aux_mask_is_each_views_largest_dead_entries():
    guide = system_of("exact_k_aux").guide
    g = torch.Generator().manual_seed(3)
    z = torch.rand(7, K, generator=g)
    for n_dead in (2, 3, 9):
        dead = torch.zeros(K, dtype=torch.bool)
        dead[torch.randperm(K, generator=g)[:n_dead]] = True
        mask = guide.aux_mask(z, dead)
        k_aux = min(2 * guide.k, n_dead)
        for row, m in zip(z.numpy(), mask.numpy()):
            dead_idx = np.flatnonzero(dead.numpy())
            expected = set(dead_idx[np.argsort(-row[dead_idx])[:k_aux]])
            assert set(np.flatnonzero(m)) == expected


@pytest.mark.parametrize("dead_dims", [0, 1, 6])
def test_the_loss_grows_by_alpha_2n_aux_and_only_the_encoder_feels_it(dead_dims):
    """Same weights, same gate draws: the penalised loss minus exact_k's is α · 2N · NT-Xent(normalize(z ⊙ m_aux))
    (nothing with fewer than 2 dead dimensions); the gate head's gradients are unchanged, the encoder's are not."""
    alpha = 0.25
    plain, aux = system_of("exact_k"), system_of("exact_k_aux", aux_weight=alpha)
    aux.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        aux.guide.idle_steps.zero_()
        aux.guide.idle_steps[K - dead_dims:] = 10 ** 6  # dead whatever this batch opens
    losses, grads = [], []
    for system in (plain, aux):
        system.zero_grad()
        batch = batch_of(system)
        pyro.set_rng_seed(5)
        losses.append(TraceGraph_ELBO().loss_and_grads(system.model.model, system.guide.guide, batch))
        grads.append({n: p.grad.clone() for n, p in system.named_parameters() if p.grad is not None})
    z = F.normalize(batch_of(aux).z.detach(), dim=1)
    if dead_dims < 2:
        assert losses[1] == pytest.approx(losses[0], rel=1e-6)
        return
    dead = torch.arange(K) >= K - dead_dims
    k_aux = min(2 * aux.guide.k, dead_dims)
    keep = torch.zeros_like(z)
    for i, row in enumerate(z):
        idx = torch.nonzero(dead).squeeze(1)
        keep[i, idx[torch.argsort(row[idx], descending=True)[:k_aux]]] = 1
    expected = alpha * 200 * independent_nt_xent(z * keep, 0.2).item()
    assert losses[1] - losses[0] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    head = [n for n in grads[0] if n.startswith("guide.")]
    assert head and all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in head)
    encoder = [n for n in grads[0] if n.startswith("encoder.")]
    assert any(not torch.allclose(grads[0][n], grads[1][n]) for n in encoder)


def test_evaluation_adds_nothing_and_counts_nothing():
    system = system_of("exact_k_aux", aux_dead_steps=1)
    system.eval()
    batch = batch_of(system)
    trace = pyro.poutine.trace(system.guide.guide).get_trace(batch)
    assert "aux_k" not in trace.nodes and int(system.guide.idle_steps.sum()) == 0


def test_aux_settings_belong_to_exact_k_aux():
    with pytest.raises(ValueError, match="--aux-weight sets the aux-k term of --guide exact_k_aux"):
        Config(method="bayesncl", aux_weight=0.1).resolved().validate()
    with pytest.raises(ValueError, match="--aux-dead-steps"):
        Config(method="ncl", aux_dead_steps=5).resolved().validate()


def test_a_training_step_counts_the_posterior_mode_not_the_sample():
    """After one training call of the guide the idle counts are 0 exactly on the dimensions in some view's mode
    (its k largest θ), 1 elsewhere — also where only a sampled mask opened the dimension (calls are repeated with
    fresh draws until a sample opens a dimension outside every mode, so that this case is checked)."""
    system = system_of("exact_k_aux")
    batch = batch_of(system)
    z = F.normalize(batch.z.detach(), dim=1)
    theta = system.guide.view_logits(batch.h, z).detach()
    in_mode = np.zeros(K, dtype=bool)
    for row in theta.numpy():
        in_mode[np.argsort(-row, kind="stable")[:system.guide.k]] = True
    for seed in range(50):
        pyro.set_rng_seed(seed)
        system.guide.idle_steps.zero_()
        trace = pyro.poutine.trace(system.guide.guide).get_trace(batch)
        assert system.guide.idle_steps.tolist() == [0 if m else 1 for m in in_mode]
        sampled = (trace.nodes["gate"]["value"] > 0.5).any(0).numpy()
        if (sampled & ~in_mode).any():  # the samples opened dimensions the mode never holds: not counted
            break
    else:
        raise AssertionError("no draw opened a dimension outside the modes: the case is not checked")
