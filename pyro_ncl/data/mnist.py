"""``mnist``: MNIST from its IDX files (``pyro_ncl.data.idx``)."""
from pyro_ncl.data.base import DATASETS
from pyro_ncl.data.idx import idx_dataset

DATASETS.register("mnist")(idx_dataset("mnist"))
