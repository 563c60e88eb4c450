"""Data sets: IDX reading/writing, offline-first resolution of files, classification splits.

See ``DESIGN.md``, "Data": files are looked up in ``data_dir``, ``PARTICLESIM_DATA``,
the user cache, system locations, the copy shipped in the package (MNIST), and only
then downloaded; every file's uncompressed content is checked against the official
digest, and the source used is always reported.
"""

from particlesim.data.datasets import (
    BUILTIN_DATASETS,
    MNIST,
    DataSplits,
    FashionMNIST,
    IDXClassification,
    IDXFolder,
    clear_cache,
)
from particlesim.data.idx import read_idx, write_idx
from particlesim.data.sources import (
    KNOWN_DATASETS,
    DatasetSpec,
    ResolvedSource,
    cache_root,
    dataset_spec,
    resolve_dataset,
    uncompressed_md5,
)

__all__ = [
    "BUILTIN_DATASETS",
    "KNOWN_DATASETS",
    "MNIST",
    "DataSplits",
    "DatasetSpec",
    "FashionMNIST",
    "IDXClassification",
    "IDXFolder",
    "ResolvedSource",
    "cache_root",
    "clear_cache",
    "dataset_spec",
    "read_idx",
    "resolve_dataset",
    "uncompressed_md5",
    "write_idx",
]
