"""Gate uncertainty (pyro_ncl.uncertainty, experiments/uncertainty.py) and --exclude-classes, against independent
computations: pairwise counts, direct sums and threshold scans, enumerated posteriors, brute-force kNN."""
import importlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_ncl import uncertainty as U
from pyro_ncl.config import Config, check_setting
from pyro_ncl.conditional_bernoulli import ConditionalBernoulli
from pyro_ncl.data import DATASETS
from pyro_ncl.probes import knn_accuracy
from pyro_ncl.system import build_system

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed")


def tied_task(n=60, seed=0):
    """Scores rounded to one decimal (many ties) and positives related to them."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=n), 1)
    positives = rng.random(n) < 1 / (1 + np.exp(-2 * scores))
    return scores, positives


# ---------------------------------------------------------------- metrics against direct computations


def test_auroc_is_the_pairwise_count_with_ties_as_half():
    for seed in range(3):
        s, p = tied_task(seed=seed)
        pos, neg = s[p], s[~p]
        count = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
        assert U.auroc(s, p) == pytest.approx(count / (len(pos) * len(neg)), abs=1e-12)
    assert U.auroc([1.0, 1.0, 1.0, 1.0], [True, False, True, False]) == 0.5  # all tied: chance
    assert U.auroc(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([False, True, False])) == 1.0


def test_swapping_in_and_out_reverses_the_scores():
    s, p = tied_task(seed=4)
    assert U.auroc(s, ~p) == pytest.approx(1 - U.auroc(s, p), abs=1e-12)
    assert U.auroc(-s, p) == pytest.approx(1 - U.auroc(s, p), abs=1e-12)
    assert U.aupr(s, p) != pytest.approx(U.aupr(s, ~p))  # AUPR is not symmetric: it names its positives


def threshold_scan(s, p):
    """(tpr, fpr, precision) at every distinct threshold t, flagging s >= t, from the highest t down."""
    rows = []
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        rows.append(((flagged & p).sum() / p.sum(), (flagged & ~p).sum() / (~p).sum(),
                     (flagged & p).sum() / flagged.sum()))
    return rows


def test_fpr_at_95_tpr_matches_a_direct_threshold_scan():
    for seed in range(3):
        s, p = tied_task(seed=seed)
        direct = min(fpr for tpr, fpr, _ in threshold_scan(s, p) if tpr >= 0.95)
        assert U.fpr_at_tpr(s, p, 0.95) == pytest.approx(direct, abs=1e-12)
    # a tie across the 95% point: the tied block is flagged whole
    s = np.array([5.0] * 19 + [1.0, 1.0] + [0.0] * 9)
    p = np.array([True] * 19 + [True, False] + [False] * 9)
    assert U.fpr_at_tpr(s, p) == pytest.approx(0.0)  # 19/20 positives above the tie: TPR 0.95 exactly
    assert U.fpr_at_tpr(s, p, 0.96) == pytest.approx(1 / 10)


def test_aupr_matches_the_step_sum_of_precision_over_recall():
    s, p = tied_task(seed=5)
    rows = threshold_scan(s, p)
    recalls = [0.0] + [r[0] for r in rows]
    direct = sum((recalls[i + 1] - recalls[i]) * rows[i][2] for i in range(len(rows)))
    assert U.aupr(s, p) == pytest.approx(direct, abs=1e-12)


def test_aurc_is_the_mean_risk_over_coverages():
    rng = np.random.default_rng(0)
    s, e = rng.normal(size=40), rng.random(40) < 0.3  # no ties
    order = np.argsort(s)
    direct = np.mean([e[order[:i]].sum() / i for i in range(1, 41)])
    rc = U.risk_coverage(s, e)
    assert rc["aurc"] == pytest.approx(direct, abs=1e-12)
    assert rc["risk"][-1] == pytest.approx(e.mean()) and np.allclose(rc["coverage"], np.arange(1, 41) / 40)
    assert U.risk_coverage(e.astype(float), e)["aurc"] <= rc["aurc"]  # errors set aside first: the least area


def test_aurc_with_ties_averages_over_the_orders_of_each_tied_block():
    s = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    e = np.array([False, True, False, False, True, False, True])
    blocks = [np.flatnonzero(s == v) for v in np.unique(s)]
    risks = []
    for orders in itertools.product(*(itertools.permutations(b) for b in blocks)):
        sequence = np.concatenate(orders)
        risks.append([e[sequence[:i]].sum() / i for i in range(1, len(s) + 1)])
    expected = np.mean(risks, 0)
    rc = U.risk_coverage(s, e)
    assert np.allclose(rc["risk"], expected, atol=1e-12)
    assert rc["aurc"] == pytest.approx(expected.mean(), abs=1e-12)
    shuffled = np.random.default_rng(1).permutation(len(s))  # the input order does not matter
    assert U.risk_coverage(s[shuffled], e[shuffled])["aurc"] == pytest.approx(rc["aurc"], abs=1e-12)


def test_metrics_refuse_a_task_without_both_kinds():
    with pytest.raises(ValueError, match="need positives and negatives"):
        U.auroc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="must be finite"):
        U.auroc([0.1, float("nan")], [True, False])


# ---------------------------------------------------------------- gate scores against hand-made posteriors


def small_system(**settings):
    config = Config(width=2, hidden_dim=8, feature_dim=4, **settings).resolved()
    torch.manual_seed(0)
    return build_system(config, in_channels=1).eval()


def bank_of(n=30, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return U.Bank(torch.rand(n, k, generator=g), torch.arange(n) % 3, (torch.rand(n, k, generator=g) < 0.5).float())


def inputs_for(system, x, **kw):
    out = system.features(x)
    return U.ScoreInputs(out, kw.pop("bank", bank_of()), 3, knn_k=5, guide=system.guide, **kw)


def test_factorised_entropy_and_kl_of_a_hand_computed_posterior():
    """relaxed_st with the head's output fixed to logits (0, logit 0.1, logit 0.9, 30): H = log 2 + 2 H(0.1),
    KL = Σ_d KL(Bern(p_d) ‖ Bern(π))."""
    system = small_system(method="bayesncl", guide="relaxed_st", prior_prob=0.2)
    logits = torch.tensor([0.0, math.log(1 / 9), math.log(9), 30.0])
    with torch.no_grad():
        system.guide.head[-1].weight.zero_()
        system.guide.head[-1].bias.copy_(logits)
    x = torch.randn(3, 1, 28, 28)
    inputs = inputs_for(system, x)
    h01 = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert torch.allclose(U.compute_scores(inputs, ["entropy"])["entropy"],
                          torch.full((3,), math.log(2) + 2 * h01, dtype=torch.float64), atol=1e-5)
    p = torch.sigmoid(logits.double())
    kl = (torch.xlogy(p, p / 0.2) + torch.xlogy(1 - p, (1 - p) / 0.8)).sum()
    assert torch.allclose(U.compute_scores(inputs, ["kl_prior"])["kl_prior"], kl.expand(3), atol=1e-4)


def test_exact_k_entropy_is_the_enumerated_one():
    system = small_system(method="bayesncl", prior_prob=0.5)  # exact_k, k = 2 of 4
    x = torch.randn(5, 1, 28, 28)
    inputs = inputs_for(system, x)
    theta = system.guide.view_logits(inputs.out["h"], inputs.out["z"]).double()
    masks = torch.tensor([m for m in itertools.product([0, 1], repeat=4) if sum(m) == 2], dtype=torch.float64)
    log_q = (theta @ masks.T).log_softmax(-1)
    assert torch.allclose(U.compute_scores(inputs, ["entropy"])["entropy"], -(log_q.exp() * log_q).sum(-1),
                          atol=1e-4)


def enumerated_hamming(dist1, dist2, masks):
    """E|m¹ − m²|₁ over all pairs of masks, weighted by q¹(m¹) q²(m²)."""
    p1, p2 = dist1.log_prob(masks).exp(), dist2.log_prob(masks).exp()
    distance = (masks[:, None, :] - masks[None, :, :]).abs().sum(-1)
    return (p1[:, None] * p2[None, :] * distance).sum()


def test_two_view_disagreement_matches_enumeration_of_two_posteriors():
    g = torch.Generator().manual_seed(0)
    theta1, theta2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    # a structured (exactly-2) posterior
    q1, q2 = ConditionalBernoulli(theta1, 2), ConditionalBernoulli(theta2, 2)
    k_masks = torch.tensor([m for m in itertools.product([0, 1], repeat=5) if sum(m) == 2], dtype=torch.float64)
    assert float(U.expected_hamming(q1.marginals[None], q2.marginals[None])[0]) == pytest.approx(
        float(enumerated_hamming(q1, q2, k_masks)), abs=1e-9)
    # a factorised one
    b1, b2 = (torch.distributions.Independent(torch.distributions.Bernoulli(logits=t), 1) for t in (theta1, theta2))
    all_masks = torch.tensor(list(itertools.product([0, 1], repeat=5)), dtype=torch.float64)
    assert float(U.expected_hamming(torch.sigmoid(theta1)[None], torch.sigmoid(theta2)[None])[0]) == pytest.approx(
        float(enumerated_hamming(b1, b2, all_masks)), abs=1e-9)


def test_dice_and_the_neighbour_gate_score_by_hand():
    mu = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    gates = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], [[1.0, 0.0, 0.0, 0.0], [0.0] * 4]])
    assert torch.allclose(U.dice(mu, gates), torch.tensor([[1.0, 0.0], [2 * 0.5 / 3, 2 * 0.0 / 2]]).double())
    system = small_system(method="bayesncl", prior_prob=0.5)
    inputs = inputs_for(system, torch.randn(6, 1, 28, 28))
    # the k = 5 nearest training images by cosine, brute force
    sims = F.normalize(inputs.out["features"], dim=1) @ F.normalize(inputs.bank.features, dim=1).T
    idx = sims.argsort(1, descending=True)[:, :5]
    expected = []
    for i in range(6):  # 1 − the mean over the k neighbours of 2 Σ μ g / (Σ μ + Σ g), written out
        mu = inputs.out["probs"][i].double()
        overlaps = [2 * (mu * g).sum() / (mu.sum() + g.sum()) for g in inputs.bank.gate[idx[i]].double()]
        expected.append(1 - torch.stack(overlaps).mean())
    expected = torch.stack(expected)
    assert torch.allclose(U.compute_scores(inputs, ["neighbour_gate_agreement"])["neighbour_gate_agreement"],
                          expected)


def test_knn_disagreement_matches_a_loop_over_the_draws():
    system = small_system(method="bayesncl", prior_prob=0.5)
    x = torch.randn(7, 1, 28, 28)
    inputs = inputs_for(system, x, samples=6, seed=3)
    score = U.compute_scores(inputs, ["knn_disagreement"])["knn_disagreement"]
    torch.manual_seed(3)
    masks = system.guide.sample_masks(inputs.out["h"], 6, inputs.out["z"])
    bank = torch.nn.functional.normalize(inputs.bank.features, dim=1)
    for i in range(7):
        labels = []
        for s in range(6):
            f = torch.nn.functional.normalize(inputs.out["z"][i] * masks[s, i], dim=0)
            sims = bank @ f
            top = sims.topk(5).indices
            votes = torch.zeros(3).index_add_(0, inputs.bank.y[top], (sims[top] / 0.07).exp())
            labels.append(int(votes.argmax()))
        share = max(labels.count(c) for c in set(labels)) / 6
        assert float(score[i]) == pytest.approx(1 - share)
    assert torch.equal(score, U.compute_scores(inputs, ["knn_disagreement"])["knn_disagreement"])  # reproducible
    point = small_system(method="bayesncl", guide="deterministic", prior_prob=0.5)  # one mask: no disagreement
    assert U.compute_scores(inputs_for(point, x), ["knn_disagreement"])["knn_disagreement"].abs().max() == 0


def test_deterministic_scores_against_brute_force():
    g = torch.Generator().manual_seed(1)
    bank = U.Bank(torch.rand(50, 6, generator=g), torch.arange(50) % 4)
    out = {"z": torch.nn.functional.normalize(torch.rand(9, 6, generator=g), dim=1)}
    out["features"] = out["z"]
    inputs = U.ScoreInputs(out, bank, 4, knn_k=7, budget=2)
    scores = U.compute_scores(inputs)
    assert set(scores) == {"kth_distance", "topk_margin", "vote_share"}  # no gate: no gate score
    sims = out["features"] @ torch.nn.functional.normalize(bank.features, dim=1).T
    assert torch.allclose(scores["kth_distance"], 1 - sims.sort(1, descending=True).values[:, 6].double(), atol=1e-6)
    ranked = out["z"].sort(1, descending=True).values
    assert torch.allclose(scores["topk_margin"], -(ranked[:, 1] - ranked[:, 2]).double())
    preds, shares = [], []
    for row in sims:
        top = row.topk(7).indices
        votes = torch.zeros(4).index_add_(0, bank.y[top], (row[top] / 0.07).exp())
        preds.append(int(votes.argmax())), shares.append(float(votes.max() / votes.sum()))
    assert inputs.predictions().tolist() == preds
    assert torch.allclose(scores["vote_share"], 1 - torch.tensor(shares, dtype=torch.float64), atol=1e-6)
    test_y = torch.arange(9) % 4  # the run's kNN accuracy is the loop's
    assert knn_accuracy(bank.features, bank.y, out["features"], test_y, k=7, num_classes=4) == pytest.approx(
        float((torch.tensor(preds) == test_y).double().mean()), abs=1e-12)


# ---------------------------------------------------------------- --exclude-classes


def test_excluded_classes_leave_training_and_become_the_outlier_split(tmp_path, fake_mnist):
    root = str(fake_mnist(tmp_path / "fm", train=120, test=40))
    data = DATASETS["fashion-mnist"](root=root, subset=50, val_size=20, exclude_classes="8,9")
    assert data.num_train == 50 and data.excluded_classes == (8, 9)
    seen = torch.cat([y for _, _, y, _ in data.train_batches(10, epoch=0, seed=0, device="cpu")])
    assert seen.numel() == 50 and not torch.isin(seen, torch.tensor([8, 9])).any()
    # --subset counts the kept images: the first 50 of labels i % 10 without 8 and 9, in order
    kept = [i for i in range(100) if i % 10 < 8][:50]
    assert data.train.labels.tolist() == [i % 10 for i in kept]
    assert data.val.labels.tolist() == [i % 10 for i in range(100, 120) if i % 10 < 8]
    test_y = torch.cat([y for _, y in data.eval_batches("test", 7, "cpu")])
    assert test_y.tolist() == [i % 10 for i in range(40) if i % 10 < 8]
    x, y = next(data.eval_batches("outliers", 100, "cpu"))
    assert y.tolist() == [8, 9] * 4 and x.shape == (8, 1, 28, 28)
    assert data.num_classes == 10  # class ids are kept
    plain = DATASETS["fashion-mnist"](root=root)
    assert plain.outliers is None
    with pytest.raises(ValueError, match="no outlier split"):
        next(plain.eval_batches("outliers", 10, "cpu"))


def test_exclude_classes_refuses_bad_ids(tmp_path, fake_mnist):
    root = str(fake_mnist(tmp_path / "fm"))
    with pytest.raises(ValueError, match="class 10 is outside 0..9"):
        DATASETS["fashion-mnist"](root=root, exclude_classes="3,10")
    with pytest.raises(ValueError, match="removes 9 of the 10 classes .* at least two"):
        DATASETS["mnist"](root=root, exclude_classes="0,1,2,3,4,5,6,7,8")
    with pytest.raises(ValueError, match="comma-separated class ids"):
        check_setting("exclude_classes", "8;9")
    assert check_setting("exclude_classes", "8,9") == "8,9"
    assert "exclude_classes" in __import__("pyro_ncl.config", fromlist=["x"]).DATASET_OPTIONS


@needs_fashion
def test_scenes_exclude_classes_keeps_backgrounds_aligned():
    data = DATASETS["scenes"](subset=200, exclude_classes="0,1")
    full = DATASETS["scenes"](subset=300)
    keep = ~torch.isin(full.train.labels, torch.tensor([0, 1]))
    assert data.num_train == 200 and not torch.isin(data.train.labels, torch.tensor([0, 1])).any()
    assert torch.equal(data.train.images, full.train.images[keep][:200])  # the same scenes, the others left out
    assert torch.equal(data.background("train"), full.background("train")[keep][:200])
    out = torch.isin(full.test.labels, torch.tensor([0, 1]))
    assert torch.equal(data.outliers.images, full.test.images[out])
    assert torch.equal(data.background("outliers"), full.background("test")[out])
    assert torch.equal(data.background("test"), full.background("test")[~out])


# ---------------------------------------------------------------- experiments/uncertainty.py end to end


def uncertainty(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "uncertainty.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def load_script():
    module = importlib.import_module("pyro_ncl.commands.uncertainty")
    return module


def metrics_by_brute_force(scores, positives):
    """AUROC as the share of (positive, negative) pairs ranked right (ties ½), AUPR as the step sum of precision over
    recall and the FPR at 95% TPR from a scan of every distinct threshold (flagging score ≥ t), in numpy."""
    s, p = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    pos, neg = s[p], s[~p]
    auroc = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    recall, aupr, fpr95 = 0.0, 0.0, None
    for t in np.unique(s)[::-1]:
        flagged = s >= t
        tpr = (flagged & p).sum() / p.sum()
        aupr += (tpr - recall) * (flagged & p).sum() / flagged.sum()
        recall = tpr
        if fpr95 is None and tpr >= 0.95:
            fpr95 = (flagged & ~p).sum() / (~p).sum()
    return {"auroc": float(auroc), "aupr": float(aupr), "fpr95": float(fpr95)}


@needs_fashion
def test_uncertainty_script_on_a_gated_run_with_held_out_classes_and_ncl(tiny_run, tmp_path, monkeypatch):
    """experiments/uncertainty.py, in this process, on the first 500 images of each set (the tiny runs evaluated
    the same 500 test images): every AUROC, AUPR and FPR95 it reports against a brute-force computation from the
    per-image scores and positives it scored them with (captured), the tasks' positives against the sets' sizes and
    the kNN errors, and the kNN accuracy against the run's own end-of-run evaluation. Bad input: one-line errors
    (through the command line: exit status 2) and nothing already written is lost."""
    gated, ncl = tiny_run("bayesncl", "--exclude-classes", "8,9"), tiny_run("ncl")
    from pyro_ncl.trained_run import load_run
    assert load_run(gated).data.outliers.labels.unique().tolist() == [8, 9]  # the setting reaches load_run
    script = load_script()
    scored = []

    def recording(scores, positives, selective=False):
        metrics, curves = task_metrics(scores, positives, selective)
        scored.append((scores, positives, metrics))
        return metrics, curves

    task_metrics = script.task_metrics
    monkeypatch.setattr(script, "task_metrics", recording)
    out = tmp_path / "unc"
    script.main(script.parser().parse_args([str(gated), str(ncl), "--out", str(out), "--samples", "4",
                                            "--eval-subset", "500", "--device", "cpu"]))
    assert all((out / name).stat().st_size > 0 for name in ("uncertainty.json", "uncertainty.md", "uncertainty.png"))
    record = json.loads((out / "uncertainty.json").read_text())
    runs = {Path(r["path"]).name: r for r in record["runs"]}
    g, n = runs[gated.name], runs[ncl.name]
    assert set(g["tasks"]) == {"misclassification", "near_ood", "far_ood"}
    assert set(n["tasks"]) == {"misclassification", "far_ood"}
    assert g["num_images"] == {"test": 500, "outliers": 500, "far": 500}
    gate_scores = {"entropy", "kl_prior", "view_disagreement", "knn_disagreement", "neighbour_gate_agreement"}
    deterministic = {"kth_distance", "topk_margin", "vote_share"}
    assert set(g["tasks"]["near_ood"]) == gate_scores | deterministic
    assert set(n["tasks"]["far_ood"]) == deterministic
    # each task's metrics as the script computed and wrote them: run by run, misclassification, near, far
    tasks = [(r, task) for r in (g, n) for task in ("misclassification", "near_ood", "far_ood") if task in r["tasks"]]
    assert len(scored) == len(tasks) == 5
    for (r, task), (scores, positives, metrics) in zip(tasks, scored):
        size = {"misclassification": (500, 0), "near_ood": (500, 500), "far_ood": (500, 500)}[task]
        assert len(positives) == sum(size)
        if task == "misclassification":  # the positives are the kNN errors
            assert float(positives.double().mean()) == pytest.approx(1 - r["knn_accuracy"], abs=1e-12)
        else:  # the test images, then the outliers
            assert positives.tolist() == [False] * size[0] + [True] * size[1]
        assert set(scores) == set(r["tasks"][task])
        for name, values in scores.items():
            assert values.shape == (sum(size),)
            want = metrics_by_brute_force(values.numpy(), positives.numpy())
            for key in ("auroc", "aupr", "fpr95"):
                assert metrics[name][key] == pytest.approx(want[key], abs=1e-12), (task, name, key)
                assert r["tasks"][task][name][key] == metrics[name][key], (task, name, key)
    assert len({round(m["auroc"], 6) for _, _, ms in scored for m in ms.values()}) > 5  # not all at chance
    for r in (g, n):  # the run's kNN classifier, evaluated on the classes it was trained on
        assert r["knn_accuracy"] == pytest.approx(r["run_knn_accuracy"], abs=1e-9)
    assert "aurc" in g["tasks"]["misclassification"]["entropy"]
    labels = [grp["label"] for grp in record["groups"]]
    assert labels[1] == "ncl" and labels[0].startswith("bayesncl exact_k π=")
    md = (out / "uncertainty.md").read_text()
    assert "| ncl | 1 | vote_share | deterministic |" in md and "best deterministic score" in md
    assert "near_ood skipped" in md

    before = (out / "uncertainty.json").read_text()
    with pytest.raises(ValueError, match="missing is not a folder"):
        script.main(script.parser().parse_args([str(gated), str(tmp_path / "missing"), "--out", str(out)]))
    assert (out / "uncertainty.json").read_text() == before  # nothing already written is lost
    bad = uncertainty(gated, "--out", out, "--scores", "entropy,nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown uncertainty score 'nope'" in bad.stderr
    assert (out / "uncertainty.json").read_text() == before
