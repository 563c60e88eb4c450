"""Device and dtype resolution (``auto`` → CUDA when present, else CPU)."""

from __future__ import annotations

import torch

from particlesim.errors import DeviceError, OptionError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → a usable :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available "
                f'(torch {torch.__version__}); use device = "auto" or "cpu"'
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; expected 'auto', 'cpu' or 'cuda'")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"``, ``"float64"`` or ``"bfloat16"`` → a :class:`torch.dtype`."""
    try:
        return DTYPES[name]
    except KeyError:
        raise OptionError(
            "dtype", f"unknown dtype {name!r}; expected one of {list(DTYPES)}"
        ) from None
