"""Tiny in-memory data sets shared by the tests (no files)."""

from __future__ import annotations

import torch

from particlesim.data.datasets import DataSplits


def tiny_splits(n: int = 48, features: int = 6, seed: int = 0, n_test: int = 24) -> DataSplits:
    """3 separable classes (class c adds 1 to feature c); the first ``n_test`` rows test."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, features, generator=g) * 0.3
    x[torch.arange(n), y] += 1.0
    empty = torch.zeros(0, features)
    return DataSplits(
        train_x=x,
        train_y=y,
        val_x=empty,
        val_y=torch.zeros(0, dtype=torch.int64),
        test_x=x[:n_test],
        test_y=y[:n_test],
        num_classes=3,
        input_shape=(features,),
        source="tiny test data",
    )
