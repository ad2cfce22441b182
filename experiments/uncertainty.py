#!/usr/bin/env python
"""How sure is the gate? Per-image uncertainty scores of trained runs, side by side with deterministic ones.

    python experiments/uncertainty.py runs/bayesncl_s0 runs/bayesncl_s1 runs/bayesncl_s2 runs/ncl_s* --out runs/unc

For each run (network in eval mode: BatchNorm statistics untouched), on the test images of the classes it was
trained on, every score of ``pyro_ncl.uncertainty.SCORES`` (higher = more uncertain): the gate scores (posterior
entropy, KL to the prior, two-view mask disagreement, kNN disagreement over ``--samples`` mask draws, the
posterior's agreement with the neighbours' gates; gated runs only) and the deterministic ones on the same
features (distance to the k-th training neighbour, top-k margin, 1 − the kNN vote share). Tasks, each scored by
AUROC, AUPR and the false-positive rate at 95% true positives:
    misclassification   the test images the run's kNN classifier (k = --knn-k, cosine, T = 0.07) gets wrong; also
                        the risk–coverage curve and its area (AURC) when the most uncertain images are set aside
    near_ood            a run trained with --exclude-classes: the removed classes' test images against the others
    far_ood             scikit-learn's 8×8 digits (load_digits) resized to 28×28 (bilinear) against the test images
                        (runs on 1-channel 28 px images; skipped for others, with a note)
Runs that differ only in their seed form a group (mean ± std over seeds). Writes --out/uncertainty.json (per run
and per group), --out/uncertainty.md (one row per group × score × task; the best deterministic score per task and
whether a gate score beats every deterministic one by more than the seed spread) and --out/uncertainty.png (ROC
curves per task, risk–coverage curves; bands: ± std over seeds). Nothing is written until every run is scored.
"""
from pyro_ncl.commands.uncertainty import cli

if __name__ == "__main__":
    cli()
