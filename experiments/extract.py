#!/usr/bin/env python
"""Export a trained run's features, per image, to a .npz file: a split of its dataset or a folder of images.

    python experiments/extract.py runs/mine --split test --out runs/mine/test_features.npz
    python experiments/extract.py runs/mine --images new_images/ --out new_features.npz --device cuda

Arrays (``np.load(FILE)`` reads them; no pickled objects): h [N, F] (backbone), z [N, K] (normalised projector
output), features [N, K] (what the evaluation scores), for gated methods gate [N, K] (the test-time mask) and probs
[N, K] (the guide's open probabilities, and what else the system reports, e.g. entropy); labels [N] (splits),
index [N] (position in the split or the file list) and names [N] (file names relative to the data or image folder,
where the images are files). Images from --images are read as the run's evaluation reads its own: converted to its
channels, resized and centre-cropped to its size, normalised with its statistics. Batched on --device (auto: CUDA
when available), a progress bar on a terminal. Bad input: one line on stderr, exit status 2.
"""
from pyro_ncl.commands.extract import cli

if __name__ == "__main__":
    cli()
