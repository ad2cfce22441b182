import math

import torch

from pyro_ncl.likelihoods import nt_xent


def nt_xent_by_hand(views, tau):
    """Loops over plain Python floats: views is a list of 2B vectors, view i's positive is view (i + B) mod 2B."""
    n = len(views)
    unit = [[a / math.sqrt(sum(b * b for b in v)) for a in v] for v in views]
    cos = [[sum(a * b for a, b in zip(u, w)) for w in unit] for u in unit]
    total = 0.0
    for i in range(n):
        pos = (i + n // 2) % n
        denom = sum(math.exp(cos[i][j] / tau) for j in range(n) if j != i)
        total += -(cos[i][pos] / tau - math.log(denom))
    return total / n


def test_nt_xent_three_images_by_hand():
    views = [[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 0.2, 1.0],   # first views of images 0, 1, 2
             [1.0, 0.3, 1.5], [0.2, 1.0, 0.1], [0.1, 0.0, 1.0]]   # second views
    for tau in (0.2, 0.5, 1.0):
        got = nt_xent(torch.tensor(views, dtype=torch.float64), tau).item()
        assert abs(got - nt_xent_by_hand(views, tau)) < 1e-10


def test_nt_xent_refuses_odd_or_tiny_batches():
    for n in (2, 5):
        try:
            nt_xent(torch.randn(n, 3), 0.2)
        except ValueError as err:
            assert "views" in str(err)
        else:
            raise AssertionError("expected a ValueError")
