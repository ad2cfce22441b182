"""``fashion-mnist``: Fashion-MNIST from its IDX files (``pyro_ncl.data.idx``)."""
from pyro_ncl.data.base import DATASETS
from pyro_ncl.data.idx import idx_dataset

DATASETS.register("fashion-mnist")(idx_dataset("fashion-mnist"))
