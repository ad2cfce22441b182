#!/usr/bin/env python
"""Count the host-device synchronisations per training step, for each data path and method: the moments the host
waits for the GPU (each one drains the GPU's queue of work; the goal is one per step, the ELBO's value).

    python experiments/count_syncs.py                  # on CUDA when there is one; prints a table, exit 1 if over
    python experiments/count_syncs.py --device cpu     # what can be counted without a GPU (see below)

On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising call (a blocking copy, ``.item()``,
``nonzero``, a boolean-mask gather, ...) warn, and the warnings are counted. On the CPU nothing waits, so the count
is of the calls that would wait on CUDA (``CallCounter``): ``.item()``, ``float``/``int``/``bool`` of a tensor,
``.tolist()``, ``nonzero``, boolean-mask indexing, a Python number written at tensor indices,
``torch.tensor``/``torch.as_tensor`` of Python values onto an explicit device, and blocking ``.to(device)``
copies. Where the host and the device are one, some waits cannot be told from no-ops (a copy of a host tensor to
the device by another route), so only the CUDA count is complete.

Each row runs ``--warmup`` steps, then counts ``--steps`` more: syncs per step of making the batch (the data: 0
expected) and of ``SVITrainer.step`` (1 expected). The ``torchrun`` row runs the data-parallel code path (rank 0 of
a 2-process shard of the data, gathered features, GlobalBatchNorm, the flat gradient all-reduce) in a
one-process group (gloo on the CPU, NCCL on CUDA) with the trainer set to take that path.
"""
import sys

from pyro_ncl.commands.count_syncs import cli

if __name__ == "__main__":
    sys.exit(cli())
