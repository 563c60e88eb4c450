"""Kernels of distance and the execution paths of kernel interactions.

``base`` holds the kernels as pure functions of the scaled squared distance;
``ops`` holds the materialised (reference) and chunked (memory-linear) paths.
"""

from particlesim.kernels.base import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    RadialKernel,
    squared_distance,
)
from particlesim.kernels.ops import (
    effective_weight,
    kernel_matmul,
    kernel_matmul_chunked,
    kernel_matmul_reference,
)

__all__ = [
    "CauchyKernel",
    "ExponentialKernel",
    "GaussianKernel",
    "Kernel",
    "RadialKernel",
    "effective_weight",
    "kernel_matmul",
    "kernel_matmul_chunked",
    "kernel_matmul_reference",
    "squared_distance",
]
