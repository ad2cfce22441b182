"""Datasets: ``load_dataset(name, root, subset=..., **options)`` → a ``DataBundle`` (see ``pyro_ncl.data.base``).

One module per dataset, named as it is registered in ``DATASETS`` with "-" as "_" (``--dataset fashion-mnist`` is
``fashion_mnist.py``, ``--dataset folder`` your own ImageFolder tree in ``folder.py``); the helper modules register
nothing: ``base`` (the interface and the registry), ``augment`` (batched views), ``file_data`` (datasets read from
image files, ``FolderData``), ``idx`` (the MNIST reader) and ``cifar`` (the CIFAR reader, the small-image recipe).
Every module of the package is imported here, so a new dataset is a new file: one factory and its registry line."""
from pyro_ncl.data.base import DATASETS, DataBundle, DatasetNotFound, ImageTensors, InMemoryData  # noqa: F401
from pyro_ncl.registry import import_modules

import_modules(__name__, __path__)


def load_dataset(name: str, root=None, **options) -> DataBundle:
    return DATASETS[name](root=root, **options)
