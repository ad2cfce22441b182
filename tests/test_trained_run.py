"""pyro_ncl.trained_run on a tiny trained run, and the inspection notebook executed end to end."""
import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2

from pyro_ncl.trained_run import (bernoulli_entropy, class_gate_frequency, extract_split, gate_frequency_by_class,
                              gate_probabilities, load_images, load_run, posterior_entropy, sample_gates,
                              switched_on)

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
NOTEBOOK = ROOT / "experiments" / "notebooks" / "inspect_gates.ipynb"

pytestmark = pytest.mark.skipif(not FASHION.exists(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def run(tiny_run):
    """A run with a sampled gate (the per-view straight-through Bernoulli guide): a posterior with uncertainty."""
    return load_run(tiny_run("bayesncl", "--guide", "relaxed_st"))


@pytest.fixture(scope="module")
def images(run):
    return load_images(run, "test", 64)


def test_load_run_rebuilds_the_system_in_eval_mode(run):
    assert not run.system.training and run.gated
    assert (run.config.method, run.config.prior, run.config.guide, run.config.feature_dim) == \
        ("bayesncl", "bernoulli", "relaxed_st", 16)
    assert "bayesncl" in repr(run) and len(repr(run)) < 300
    assert run.data.num_classes == 10


def test_load_run_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_run(tmp_path)


def entropy_by_hand(p):
    """Elementwise Bernoulli entropy −p log p − (1 − p) log(1 − p) in nats, float64 (0 log 0 = 0)."""
    p = p.double()
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def test_probabilities_samples_and_entropy(run, images):
    x, _ = images
    probs = gate_probabilities(run, x)
    with torch.no_grad():  # the sampled gate's open probability σ(head(h)), by hand
        h, _ = run.system.encoder(x)
        assert torch.allclose(probs, torch.sigmoid(run.system.guide.head(h)), atol=1e-6)
    assert probs.shape == (64, 16)
    # the test-time gate of the system is 1[q > 0.5]
    assert torch.equal(run.system.features(x)["gate"].bool(), probs > 0.5)

    samples = sample_gates(run, x, 4)
    assert samples.shape == (4, 64, 16) and set(samples.unique().tolist()) <= {0.0, 1.0}
    n = 4000  # the draws follow q: each of the 4 × 16 open frequencies within 5 binomial standard errors of q
    many = sample_gates(run, x[:4], n)
    se = (probs[:4] * (1 - probs[:4]) / n).sqrt()
    assert ((many.mean(0) - probs[:4]).abs() <= 5 * se + 1e-6).all()
    assert 0.05 < float(probs[:4].mean()) < 0.95  # not all saturated: the bound can fail

    entropy = posterior_entropy(run, x)
    assert entropy.shape == (16,) and torch.allclose(entropy.double(), entropy_by_hand(probs).mean(0), atol=1e-5)
    assert float(bernoulli_entropy(torch.tensor([-200.0, 0.0, 200.0]))[1]) == pytest.approx(math.log(2))
    assert bernoulli_entropy(torch.tensor([-200.0, 200.0])).tolist() == [0.0, 0.0]


def test_class_gate_frequency_matches_a_loop_over_the_test_gates(run):
    freq = class_gate_frequency(run, "test")
    test = extract_split(run, "test")
    assert freq.shape == (10, 16) and float(freq.min()) >= 0 and float(freq.max()) <= 1
    rows = {c: [] for c in range(10)}
    for gate, label in zip(test["gate"], test["y"].tolist()):
        rows[label].append(gate)
    for c in range(10):
        assert torch.allclose(freq[c], torch.stack(rows[c]).mean(0), atol=1e-6)
    empty = gate_frequency_by_class(torch.ones(3, 2), torch.tensor([0, 0, 2]), 4)
    assert torch.equal(empty[0], torch.ones(2)) and torch.isnan(empty[1]).all()


def test_switched_on_lists_the_open_dims_most_probable_first(run, images):
    x, _ = images
    on = switched_on(run, x[3])
    probs = gate_probabilities(run, x[3:4])[0]
    assert [d for d, _ in on] == sorted((probs > 0.5).nonzero().squeeze(1).tolist(), key=lambda d: -float(probs[d]))
    assert all(p > 0.5 and p == pytest.approx(float(probs[d])) for d, p in on)
    assert switched_on(run, x[3:4]) == on
    with pytest.raises(ValueError, match="one image"):
        switched_on(run, x[:2])


def test_queries_never_touch_batchnorm_statistics(run, images):
    x, _ = images
    before = {k: v.clone() for k, v in run.system.state_dict().items()}
    run.system.train()  # even when left in train mode by the caller
    try:
        gate_probabilities(run, x), sample_gates(run, x, 2), posterior_entropy(run, x), switched_on(run, x[0])
        class_gate_frequency(run, "train")
        assert run.system.training  # the caller's mode is restored
    finally:
        run.system.eval()
    after = run.system.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the check can fail: a train-mode forward pass moves the running statistics
    probe = copy.deepcopy(run.system).train()
    with torch.no_grad():
        probe.encoder(x)
    assert any(not torch.equal(before[k], v) for k, v in probe.state_dict().items() if "running" in k)


def test_ungated_run_is_refused_by_name(tiny_run, images):
    x, _ = images
    ncl = load_run(tiny_run("ncl"))
    for query in (lambda: gate_probabilities(ncl, x), lambda: sample_gates(ncl, x, 2),
                  lambda: posterior_entropy(ncl, x), lambda: class_gate_frequency(ncl),
                  lambda: switched_on(ncl, x[0])):
        with pytest.raises(ValueError, match=r"has no gate \(method ncl\)"):
            query()


def test_notebook_executes(run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "committed with outputs"
    assert 'os.environ.get("RUN_DIR", "runs/bayesncl")' in nb.cells[1].source
    monkeypatch.setenv("RUN_DIR", str(run.path))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4


def untrained_run(tmp_path, **settings):
    """A Run around a freshly built system (no training, no dataset): what inspection reports is the guide's."""
    from pyro_ncl.config import Config
    from pyro_ncl.trained_run import Run
    from pyro_ncl.system import build_system
    config = Config(width=4, hidden_dim=16, feature_dim=8, **settings).resolved()
    torch.manual_seed(0)
    return Run(tmp_path, config, build_system(config, in_channels=1).eval(), torch.device("cpu"))


def test_deterministic_guide_is_inspected_at_its_trained_temperature(tmp_path):
    """The deterministic gate trains q = σ(a/T): at T = 0.5 inspection reports σ(a/T), not σ(a), and its draws are
    its one mask."""
    run = untrained_run(tmp_path, guide="deterministic", gate_temperature=0.5)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h, _ = run.system.encoder(x)
        a = run.system.guide.head(h)
    q = torch.sigmoid(a / 0.5)
    assert (q - torch.sigmoid(a)).abs().max() > 0.01  # the two differ: the check can fail
    assert torch.allclose(gate_probabilities(run, x), q, atol=1e-6)
    assert torch.allclose(posterior_entropy(run, x).double(), entropy_by_hand(q).mean(0), atol=1e-6)
    assert torch.equal(sample_gates(run, x, 3), (a > 0).float().expand(3, -1, -1))
    on = switched_on(run, x[0])
    assert all(p == pytest.approx(float(q[0, d]), abs=1e-6) for d, p in on)


def test_relaxed_soft_samples_are_masks(tmp_path):
    run = untrained_run(tmp_path, prior="concrete", guide="relaxed_soft", gate_temperature=0.5)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    samples = sample_gates(run, x, 2000)
    probs = gate_probabilities(run, x)
    assert samples.shape == (2000, 4, 8) and samples.min() >= 0 and samples.max() <= 1
    assert ((samples > 0.5).float().mean(0) - probs).abs().max() < 0.05  # P(m > ½) = σ(a)


def test_default_gate_is_an_exactly_k_posterior_with_uncertainty(tiny_run):
    """The default BayesNCL gate (``exact_k``, k = max(2, round(π·K)) = 2 of 16 here), against the enumeration of
    its C(16, 2) = 120 masks, q(m) ∝ exp(θ·m) with θ the guide's logits (float64): the marginals, the posterior
    entropy and the per-gate entropies are the enumerated ones (to float32 rounding), the test-time gate is the mode
    (the k largest θ), and 4,000 draws per image open exactly k gates with the enumerated law (each marginal within
    5 binomial standard errors; a chi-square test at p = 1e-6 over the masks expecting ≥ 20 draws, the rest pooled)."""
    run = load_run(tiny_run("bayesncl"))
    assert run.config.guide == "exact_k"
    x, _ = load_images(run, "test", 8)
    with torch.no_grad():
        out = run.system.features(x)
        theta = run.system.guide.view_logits(out["h"], out["z"]).double()
    masks = torch.tensor([m for m in itertools.product([0, 1], repeat=16) if sum(m) == 2], dtype=torch.float64)
    log_q = (theta @ masks.T).log_softmax(-1)                               # [8 images, 120 masks]
    q = log_q.exp()
    marginals, entropy = q @ masks, -(q * log_q).sum(-1)
    probs = gate_probabilities(run, x)
    assert torch.allclose(probs.double(), marginals, atol=1e-5) and torch.allclose(out["probs"].double(), marginals,
                                                                                   atol=1e-5)
    assert torch.allclose(out["entropy"].double(), entropy, atol=1e-5)
    # uncertainty: no image's posterior is a point mass, and the batch's mean is far from one
    assert float(entropy.min()) > 0.01 and float(entropy.mean()) > 0.1
    assert torch.allclose(posterior_entropy(run, x).double(), entropy_by_hand(marginals).mean(0), atol=1e-5)
    top = theta.topk(2, dim=1).indices
    assert torch.equal(out["gate"], torch.zeros(8, 16).scatter_(1, top, 1.0))
    n = 4000
    draws = sample_gates(run, x[:4], n)                                     # [n, 4, 16]
    assert torch.equal(draws.sum(-1), torch.full((n, 4), 2.0))
    se = (marginals[:4] * (1 - marginals[:4]) / n).sqrt()
    assert ((draws.mean(0).double() - marginals[:4]).abs() <= 5 * se + 1e-6).all()
    codes = (draws * 2.0 ** torch.arange(16)).sum(-1).long()                # [n, 4]: each drawn mask as an integer
    mask_codes = (masks * 2.0 ** torch.arange(16, dtype=torch.float64)).sum(-1).long()
    for i in range(4):
        observed = (codes[:, i, None] == mask_codes).sum(0).double()       # [120]
        expected = n * q[i]
        big = expected >= 20
        assert int(big.sum()) >= 2                                          # >= 2 degrees of freedom
        obs = torch.cat([observed[big], observed[~big].sum(0, keepdim=True)])
        exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)])
        assert float(((obs - exp) ** 2 / exp).sum()) < chi2.isf(1e-6, len(obs) - 1), i
