"""Data losses: how the network's outputs are scored against the targets.

A loss is the data term ``L`` of the energy ``U = L + Σ_p c_p E_p`` that integrators
descend. Every data set names the loss that suits its targets (``DataSplits.loss``:
class indices → ``cross_entropy``, real targets → ``mse``, …) and the scenario's
``[run] loss`` may override it. A loss also says which outputs count as correct, so that
``train_accuracy`` and ``test_accuracy`` mean the same thing for every task; regression
losses return ``None`` and accuracies are then NaN.

Losses are registered like every other component (hook ``particlesim_register_losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from particlesim.errors import OptionError

Reduction = Literal["mean", "sum"]


def scoring_precision(outputs: Tensor) -> Tensor:
    """``outputs`` in float32, or float64 when they already are (a Hessian needs float64)."""
    return outputs if outputs.dtype == torch.float64 else outputs.float()


class Loss:
    """Base class: ``loss(outputs, targets, reduction)`` and ``correct(outputs, targets)``.

    ``outputs`` are the network's ``[B, K]`` outputs; ``targets`` are whatever the data set
    yields for the same rows. ``reduction="sum"`` lets evaluation average exactly over a
    whole split in several batches.
    """

    name: ClassVar[str] = ""

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        raise NotImplementedError  # pragma: no cover

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor | None:
        """How many rows of the batch are right (a float tensor), or ``None`` if undefined."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(Loss):
    """Softmax cross-entropy against class indices ``[B]`` (int64); correct = argmax hit."""

    name = "cross_entropy"

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        return F.cross_entropy(scoring_precision(outputs), targets, reduction=reduction)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs.argmax(-1) == targets).sum().float()


class MeanSquaredError(Loss):
    """``scale · mean_b |f(x_b) - y_b|²`` for real targets (``[B]`` or ``[B, K]``).

    Class indices (integer targets ``[B]``) against ``K > 1`` outputs are one-hot encoded,
    the classic squared error of a classifier; accuracy is then the argmax hit rate (for
    real targets there is none).

    Args:
        scale: a constant factor; ``0.5`` gives the ``½ E|f - y|²`` of mean-field papers.
    """

    name = "mse"

    def __init__(self, *, scale: float = 1.0) -> None:
        if not scale > 0:
            raise OptionError("scale", f"must be > 0, got {scale}")
        self.scale = float(scale)

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        outputs = scoring_precision(outputs).reshape(outputs.shape[0], -1)
        if _class_indices(outputs, targets):
            targets = F.one_hot(targets.long(), outputs.shape[1])
        targets = targets.to(outputs.dtype).reshape(outputs.shape[0], -1)
        if targets.shape[1] != outputs.shape[1]:
            raise OptionError(
                "loss",
                f"mse compares outputs [B, {outputs.shape[1]}] with targets of the same shape "
                f"(or class indices), got targets {tuple(targets.shape)}",
            )
        per_row = (outputs - targets).pow(2).sum(-1)
        total = per_row.mean() if reduction == "mean" else per_row.sum()
        return self.scale * total

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor | None:
        outputs = outputs.reshape(outputs.shape[0], -1)
        if not _class_indices(outputs, targets):
            return None
        return (outputs.argmax(-1) == targets).sum().float()

    def __repr__(self) -> str:
        return f"MeanSquaredError(scale={self.scale:g})"


def _class_indices(outputs: Tensor, targets: Tensor) -> bool:
    """Integer targets ``[B]`` against ``[B, K > 1]`` outputs: class labels, not values."""
    return (
        targets.ndim == 1
        and not targets.is_floating_point()
        and not targets.is_complex()
        and outputs.shape[1] > 1
    )


class BinaryCrossEntropy(Loss):
    """Logistic loss of one output logit against 0/1 targets; correct = sign matches."""

    name = "binary_cross_entropy"

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        logits = scoring_precision(outputs).reshape(outputs.shape[0], -1)
        if logits.shape[1] != 1:
            raise OptionError(
                "loss", f"binary_cross_entropy needs one output per example, got {logits.shape[1]}"
            )
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], targets.to(logits.dtype), reduction=reduction
        )

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        predicted = outputs.reshape(outputs.shape[0], -1)[:, 0] > 0
        return (predicted == (targets > 0.5)).sum().float()


class MultiHeadCrossEntropy(Loss):
    """Several softmax heads side by side: outputs ``[B, Σ heads]``, targets ``[B, H]``.

    Head ``i`` owns ``heads[i]`` consecutive outputs and is scored by cross-entropy against
    ``targets[:, i]``; a target of ``-1`` means "this example has no label for head i" (a
    sequential multi-task set shows one task per example). The loss is the sum over heads of
    the mean over labelled examples; correct counts, per example, the fraction of its labelled
    heads that are right (so accuracy is the mean over tasks).

    Args:
        heads: the number of classes of each head.
    """

    name = "multi_head_cross_entropy"

    def __init__(self, *, heads: Sequence[int] = (10, 10)) -> None:
        heads = [int(h) for h in heads]
        if not heads or any(h < 2 for h in heads):
            raise OptionError("heads", f"each head needs at least 2 classes, got {heads}")
        self.heads = heads

    def _split(self, outputs: Tensor, targets: Tensor) -> list[tuple[Tensor, Tensor]]:
        if outputs.shape[-1] != sum(self.heads):
            raise OptionError(
                "loss",
                f"heads {self.heads} need {sum(self.heads)} outputs, the network has "
                f"{outputs.shape[-1]}",
            )
        targets = targets.reshape(targets.shape[0], -1)
        if targets.shape[1] != len(self.heads):
            raise OptionError(
                "loss", f"{len(self.heads)} heads need {len(self.heads)} targets per example"
            )
        return list(
            zip(
                scoring_precision(outputs).split(self.heads, dim=-1),
                targets.unbind(-1),
                strict=True,
            )
        )

    def __call__(self, outputs: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
        total = outputs.new_zeros((), dtype=scoring_precision(outputs).dtype)
        for logits, target in self._split(outputs, targets):
            labelled = target >= 0
            count = labelled.sum()
            if count == 0:
                continue
            head = F.cross_entropy(logits[labelled], target[labelled], reduction="sum")
            if reduction == "mean":
                # Each head weighs the same: divide by its own labelled count.
                head = head / count
            total = total + head
        return total

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        hits = outputs.new_zeros(outputs.shape[0], dtype=torch.float32)
        labelled = outputs.new_zeros(outputs.shape[0], dtype=torch.float32)
        for logits, target in self._split(outputs, targets):
            valid = target >= 0
            hits += ((logits.argmax(-1) == target) & valid).float()
            labelled += valid.float()
        return (hits / labelled.clamp_min(1)).sum()

    def __repr__(self) -> str:
        return f"MultiHeadCrossEntropy(heads={self.heads})"


BUILTIN_LOSSES: tuple[type[Loss], ...] = (
    CrossEntropy,
    MeanSquaredError,
    BinaryCrossEntropy,
    MultiHeadCrossEntropy,
)
