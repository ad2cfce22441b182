"""``cifar100``: CIFAR-100 from torchvision's on-disk format (``pyro_ncl.data.cifar``)."""
from pyro_ncl.data.base import DATASETS
from pyro_ncl.data.cifar import cifar_dataset

DATASETS.register("cifar100")(cifar_dataset("cifar100"))
