"""Datasets: ``load_dataset(name, root, subset=..., **options)`` → a ``DataBundle`` (see ``pyro_ncl.data.base``)."""
from pyro_ncl.data.base import DATASETS, DataBundle, DatasetNotFound, ImageTensors, InMemoryData  # noqa: F401
from pyro_ncl.data import idx  # noqa: F401,E402  (registers mnist, fashion-mnist)
from pyro_ncl.data import cifar, imagenet, scenes, stl10  # noqa: F401,E402  (imagenet100, cifar10/100, stl10, scenes)
from pyro_ncl.data import image_tree  # noqa: F401,E402  (folder: your own ImageFolder tree)


def load_dataset(name: str, root=None, **options) -> DataBundle:
    return DATASETS[name](root=root, **options)
