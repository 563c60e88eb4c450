"""The data loss of the authors' published code: one cross-entropy mean over all labelled heads.

The engine's ``multi_head_cross_entropy`` sums, over the task heads, each head's mean
cross-entropy over the examples labelled for it, so every task weighs the same whatever
its share of a batch. The authors' code (``nn/loss.py`` of github.com/gmum/SpatialNetworks)
takes one ``cross_entropy`` mean instead: over every (example, head) pair of a
concatenated or mixed batch (``[B, classes, tasks]`` against ``[B, tasks]``), and over the
examples of a sequential batch, each scored by its own task's head. For two heads that is
half the engine's loss in the concatenation and mixing modes, and in the sequential mode
each task weighs by its share of the batch. Only the data term's scale relative to the
spatial costs changes (Adam undoes a common scale of the whole loss, not of one term), so
with this loss the costs act twice as strongly against the data.

Registered as the loss ``pooled_head_cross_entropy``::

    [loss]
    name = "pooled_head_cross_entropy"
    heads = [10, 10]
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from particlesim.core.losses import MultiHeadCrossEntropy, Reduction, scoring_precision


class PooledHeadCrossEntropy(MultiHeadCrossEntropy):
    """Cross-entropy averaged over every labelled (example, head) pair (module docstring).

    Outputs, targets, accuracy and the ``-1`` "no label" marker are as in the engine's
    ``multi_head_cross_entropy``; only the mean differs. ``reduction="sum"`` is the same
    sum as the engine's.

    Args:
        heads: the number of classes of each head.

    Example:
        >>> import torch
        >>> loss = PooledHeadCrossEntropy(heads=[2, 2])
        >>> outputs = torch.zeros(2, 4)  # every head uniform: ln 2 per labelled pair
        >>> targets = torch.tensor([[0, -1], [1, 0]])  # three labelled pairs
        >>> round(loss(outputs, targets).item(), 4)  # (3 ln 2) / 3
        0.6931
    """

    name = "pooled_head_cross_entropy"

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        total = outputs.new_zeros((), dtype=scoring_precision(outputs).dtype)
        pairs = 0
        for logits, target in self._split(outputs, targets):
            labelled = target >= 0
            count = int(labelled.sum())
            if count == 0:
                continue
            total = total + F.cross_entropy(logits[labelled], target[labelled], reduction="sum")
            pairs += count
        if reduction == "mean":
            return total / max(pairs, 1)
        return total

    def __repr__(self) -> str:
        return f"PooledHeadCrossEntropy(heads={self.heads})"
