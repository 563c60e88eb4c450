"""Classification data sets stored as IDX files: MNIST, Fashion-MNIST and user folders.

A data set is a plain class with a ``name`` and keyword-only, typed
constructor options (the scenario's ``[data]`` table is checked against that
signature). :meth:`IDXClassification.load` finds the files (offline first,
see :mod:`particlesim.data.sources`), says which source it used, decodes the
IDX files and returns :class:`DataSplits`: flattened float32 images and int64
labels, with an optional seeded sub-sample of the training set and a held-out
validation split.

Decoded arrays are cached per process, keyed by file path, mtime and size, so
repeated loads (tests, parameter sweeps) do not decompress the files again.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from particlesim.data.idx import read_idx
from particlesim.data.sources import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DatasetSpec,
    ResolvedSource,
    dataset_spec,
    resolve_dataset,
)
from particlesim.errors import DataError, OptionError, close_matches

NORMALIZE_MODES = ("unit", "standard", "none")


@dataclass
class DataSplits:
    """The tensors of a data set, ready for training.

    ``*_x`` are ``[n, F]`` float32 (images flattened; ``input_shape`` keeps
    their shape); ``*_y`` are the targets: ``[n]`` int64 class indices for
    classification, real values for regression, ``[n, H]`` for several heads —
    ``loss`` names the loss that reads them and ``num_classes`` is the number of
    network outputs they need. The validation split may have 0 rows. ``source``
    says where the data came from; it is printed and recorded in the trajectory.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    source: str
    #: The registered loss that scores these targets (the scenario's ``[run] loss = "auto"``).
    loss: str = "cross_entropy"
    #: Options of that loss (e.g. ``{"heads": [10, 10]}``).
    loss_options: dict[str, Any] = field(default_factory=dict)
    #: Online data: ``sampler(batch_size, generator) -> (x, y)`` draws a fresh training batch
    #: each step (the ``train_*`` tensors then only size an epoch); ``None`` for a fixed set.
    sampler: Callable[[int, torch.Generator], tuple[Tensor, Tensor]] | None = None


# --------------------------------------------------------------------------- array cache

_CACHE_SIZE = 8  # files; two full data sets (about 110 MB of uint8)
_ARRAYS: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()


def fraction_subset(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor | None:
    """Sorted indices of a random ``round(fraction·n)`` of ``n`` examples (at least 1), drawn
    from ``generator``; ``None`` (all of them, nothing drawn) when ``fraction >= 1``."""
    if fraction >= 1.0:
        return None
    k = min(n, max(1, round(fraction * n)))
    return torch.randperm(n, generator=generator)[:k].sort().values


def read_cached(path: Path) -> np.ndarray:
    """:func:`read_idx` with a small per-process LRU cache keyed by (path, mtime, size).

    The returned array is shared between callers: treat it as read-only.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"{path}: cannot read file: {error.strerror or error}") from error
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _ARRAYS:
        _ARRAYS.move_to_end(key)
        return _ARRAYS[key]
    array = read_idx(path)
    array.flags.writeable = False
    _ARRAYS[key] = array
    while len(_ARRAYS) > _CACHE_SIZE:
        _ARRAYS.popitem(last=False)
    return array


def clear_cache() -> None:
    """Forget every decoded array (frees memory; tests use it to force a re-read)."""
    _ARRAYS.clear()


# --------------------------------------------------------------------------- helpers


def _to_float(images: np.ndarray) -> Tensor:
    """``[n, ...]`` → ``[n, F]`` float32 (a fresh tensor; the cached array is read-only)."""
    features = math.prod(images.shape[1:])
    return torch.from_numpy(images.reshape(images.shape[0], features).astype(np.float32))


def _to_unit(images: np.ndarray) -> Tensor:
    """Scale integer pixels to [0, 1] by their type's range (uint8: /255); floats are kept."""
    tensor = _to_float(images)
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        if info.min != 0:
            tensor.sub_(float(info.min))
        tensor.div_(float(info.max - info.min))
    return tensor


def _take(array: np.ndarray, indices: Tensor) -> np.ndarray:
    """``array[indices]``, without a copy when ``indices`` is all of ``0..n-1`` in order."""
    if indices.numel() == array.shape[0] and (
        indices.numel() == 0 or int(indices[-1]) == indices.numel() - 1
    ):
        return array
    return array[indices.numpy()]


def _labels(array: np.ndarray, path: Path) -> Tensor:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{path}: labels must be a 1-D integer IDX array, found {array.dtype} of shape"
            f" {array.shape}"
        )
    if array.size and array.min() < 0:
        raise DataError(f"{path}: labels must be non-negative, found {int(array.min())}")
    return torch.from_numpy(array.astype(np.int64))


def _check_pair(images: np.ndarray, labels: np.ndarray, files: dict[str, Path], which: str) -> None:
    image_file = files[TRAIN_IMAGES if which == "train" else TEST_IMAGES]
    label_file = files[TRAIN_LABELS if which == "train" else TEST_LABELS]
    if images.ndim < 2:
        raise DataError(
            f"{image_file}: images must have at least 2 dimensions [n, ...], found shape"
            f" {images.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_file}: {images.shape[0]} {which} images but {label_file.name} has"
            f" {labels.shape[0]} labels"
        )


# --------------------------------------------------------------------------- data sets


class IDXClassification:
    """An image classification data set stored as the four standard IDX files.

    Subclasses set ``name`` (the registry name) and ``spec`` (which files, their
    digests and where they may live, :class:`~particlesim.data.sources.DatasetSpec`).

    Args:
        data_dir: a folder holding the files, searched before anything else.
        train_fraction: use a seeded random subset of this fraction of the
            training set (0 < f ≤ 1); for quick runs and data-size studies.
        validation: hold out this fraction of the (sub-sampled) training set as
            the validation split (0 ≤ v < 1).
        normalize: ``"unit"`` scales pixels to [0, 1] (/255); ``"standard"``
            subtracts the training set's mean and divides by its standard
            deviation (over all pixels); ``"none"`` keeps raw values as float.
        limit_test: use only the first ``k`` test examples (``None``: all).
        download: allow downloading the official files into the user cache
            when no local copy exists.
    """

    #: A fixed training set: scenario validation refuses ``[run] batch_schedule`` for it.
    online: ClassVar[bool] = False
    name: ClassVar[str] = ""
    spec: ClassVar[DatasetSpec | None] = None

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        train_fraction: float = 1.0,
        validation: float = 0.0,
        normalize: str = "unit",
        limit_test: int | None = None,
        download: bool = True,
    ) -> None:
        if not 0.0 < train_fraction <= 1.0:
            raise OptionError("train_fraction", f"must be in (0, 1], got {train_fraction}")
        if not 0.0 <= validation < 1.0:
            raise OptionError("validation", f"must be in [0, 1), got {validation}")
        if normalize not in NORMALIZE_MODES:
            choices = ", ".join(repr(m) for m in NORMALIZE_MODES)
            hint = close_matches(str(normalize), NORMALIZE_MODES)
            raise OptionError("normalize", f"must be one of {choices}, got {normalize!r}{hint}")
        if limit_test is not None and (isinstance(limit_test, bool) or limit_test < 0):
            raise OptionError(
                "limit_test", f"must be a non-negative integer or nothing, got {limit_test!r}"
            )
        self.data_dir = data_dir
        self.train_fraction = float(train_fraction)
        self.validation = float(validation)
        self.normalize = normalize
        self.limit_test = limit_test
        self.download = download

    def dataset_spec(self) -> DatasetSpec:
        """The spec used to resolve the files (the class's ``spec`` by default)."""
        if self.spec is None:
            raise DataError(f"{type(self).__name__} defines no data set spec")
        return self.spec

    def resolve(self, *, log: Callable[[str], None] | None = None) -> ResolvedSource:
        """Find and verify the files (see :func:`~particlesim.data.sources.resolve_dataset`)."""
        return resolve_dataset(
            self.dataset_spec(), data_dir=self.data_dir, download=self.download, log=log
        )

    def load(self, *, seed: int, log: Callable[[str], None] = print) -> DataSplits:
        """Resolve, read and split the data set; the same ``seed`` gives the same subset and split.

        Calls ``log`` once with the source, e.g. ``"data: mnist from package
        copy /…/particlesim/data/mnist (digests verified)"``.
        """
        spec = self.dataset_spec()
        resolved = self.resolve(log=log)
        check = "digests verified" if resolved.verified else "no known digests"
        notes = "".join(f"; skipped {note}" for note in resolved.skipped)
        source = f"{resolved.describe()} ({check}{notes})"
        log(f"data: {source}")

        files = resolved.files
        train_images = read_cached(files[TRAIN_IMAGES])
        train_labels = read_cached(files[TRAIN_LABELS])
        test_images = read_cached(files[TEST_IMAGES])
        test_labels = read_cached(files[TEST_LABELS])
        _check_pair(train_images, train_labels, files, "train")
        _check_pair(test_images, test_labels, files, "test")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise DataError(
                f"{files[TEST_IMAGES]}: test images are {test_images.shape[1:]} but training"
                f" images are {train_images.shape[1:]}"
            )
        train_y_all = _labels(train_labels, files[TRAIN_LABELS])
        test_y = _labels(test_labels, files[TEST_LABELS])
        num_classes = spec.num_classes
        if num_classes is None:
            num_classes = int(max(train_y_all.max(), test_y.max())) + 1
        else:
            for labels, path in ((train_y_all, files[TRAIN_LABELS]), (test_y, files[TEST_LABELS])):
                if labels.numel() and int(labels.max()) >= num_classes:
                    raise DataError(
                        f"{path}: label {int(labels.max())} out of range for {num_classes} classes"
                    )

        train_idx, val_idx = self.split_indices(train_images.shape[0], seed=seed)
        if self.limit_test is not None:
            test_images = test_images[: self.limit_test]
            test_y = test_y[: self.limit_test]

        train_x = self._pixels(_take(train_images, train_idx))
        val_x = self._pixels(_take(train_images, val_idx))
        test_x = self._pixels(test_images)
        if self.normalize == "standard":
            mean = train_x.mean()
            std = train_x.std()
            std = std if float(std) > 0 and math.isfinite(float(std)) else torch.ones(())
            for tensor in (train_x, val_x, test_x):
                tensor.sub_(mean).div_(std)

        return DataSplits(
            train_x=train_x.contiguous(),
            train_y=train_y_all[train_idx].contiguous(),
            val_x=val_x.contiguous(),
            val_y=train_y_all[val_idx].contiguous(),
            test_x=test_x.contiguous(),
            test_y=test_y.contiguous(),
            num_classes=num_classes,
            input_shape=tuple(int(d) for d in train_images.shape[1:]),
            source=source,
        )

    def _pixels(self, images: np.ndarray) -> Tensor:
        """``[n, ...]`` images → ``[n, F]`` float32, scaled to [0, 1] for ``normalize="unit"``."""
        if self.normalize == "unit":
            return _to_unit(images)
        return _to_float(images)

    def split_indices(self, n: int, *, seed: int) -> tuple[Tensor, Tensor]:
        """Sorted indices of the training and validation examples among ``n``.

        A ``torch.Generator`` seeded with ``seed`` draws first the subset
        (``round(train_fraction·n)`` examples, at least 1; only when
        ``train_fraction < 1``), then the validation hold-out
        (``round(validation·k)``, leaving at least one training example). The
        subset therefore does not depend on ``validation``.
        """
        generator = torch.Generator().manual_seed(int(seed))
        keep = fraction_subset(n, self.train_fraction, generator)
        indices = np.arange(n) if keep is None else keep.numpy()
        k = indices.size
        n_val = min(round(self.validation * k), k - 1) if self.validation > 0 else 0
        if n_val <= 0:
            return torch.from_numpy(indices), torch.from_numpy(indices[:0])
        order = torch.randperm(k, generator=generator).numpy()
        val = np.sort(indices[order[:n_val]])
        train = np.sort(indices[order[n_val:]])
        return torch.from_numpy(train), torch.from_numpy(val)


class MNIST(IDXClassification):
    """The MNIST handwritten digits (60 000 training, 10 000 test images, 28×28, 10 classes).

    A verified copy ships inside the package, so it loads on a machine with no
    network and no data folder.
    """

    name = "mnist"

    def dataset_spec(self) -> DatasetSpec:
        """The known MNIST spec (looked up per call, so ``sources.SYSTEM_DIRS`` edits apply)."""
        return dataset_spec("mnist")


class FashionMNIST(IDXClassification):
    """Zalando's Fashion-MNIST (60 000 training, 10 000 test images, 28×28, 10 classes)."""

    name = "fashion_mnist"

    def dataset_spec(self) -> DatasetSpec:
        """The known Fashion-MNIST spec."""
        return dataset_spec("fashion_mnist")


class IDXFolder(IDXClassification):
    """A user folder holding the four standard IDX file names (``.gz`` or not).

    No digests are known, so none are checked; only ``data_dir`` is searched.
    ``num_classes`` is the largest label + 1.
    """

    name = "idx"

    def __init__(
        self,
        *,
        data_dir: str,
        train_fraction: float = 1.0,
        validation: float = 0.0,
        normalize: str = "unit",
        limit_test: int | None = None,
    ) -> None:
        if not isinstance(data_dir, str | os.PathLike) or str(data_dir) == "":
            raise OptionError("data_dir", f"must name a folder, got {data_dir!r}")
        super().__init__(
            data_dir=str(data_dir),
            train_fraction=train_fraction,
            validation=validation,
            normalize=normalize,
            limit_test=limit_test,
            download=False,
        )

    def dataset_spec(self) -> DatasetSpec:
        """A digest-free spec that looks only in ``data_dir``."""
        return DatasetSpec(name=self.name, title="IDX folder", data_dir_only=True)


BUILTIN_DATASETS: tuple[type[IDXClassification], ...] = (MNIST, FashionMNIST, IDXFolder)
