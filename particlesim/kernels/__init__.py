"""Kernels of distance and the execution paths of kernel interactions.

``base`` holds the kernels as pure functions of the scaled squared distance (with an
optional smooth cutoff); ``ops`` holds the materialised (reference) and chunked
(memory-linear) paths and the backend selection; ``fused`` the Triton kernels (imported on
first use); ``neighbours`` the block-sparse neighbour lists used with a cutoff.
"""

from particlesim.kernels.base import (
    CauchyKernel,
    ExponentialKernel,
    GaussianKernel,
    Kernel,
    KernelError,
    RadialKernel,
    kernel_class_problem,
    squared_distance,
    xplor_switch,
    xplor_switch_derivative,
)
from particlesim.kernels.neighbours import NeighbourCache, NeighbourList, build_neighbour_list
from particlesim.kernels.ops import (
    BACKENDS,
    Backend,
    effective_weight,
    kernel_matmul,
    kernel_matmul_chunked,
    kernel_matmul_reference,
    select_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "CauchyKernel",
    "ExponentialKernel",
    "GaussianKernel",
    "Kernel",
    "KernelError",
    "NeighbourCache",
    "NeighbourList",
    "RadialKernel",
    "build_neighbour_list",
    "effective_weight",
    "kernel_class_problem",
    "kernel_matmul",
    "kernel_matmul_chunked",
    "kernel_matmul_reference",
    "select_backend",
    "squared_distance",
    "xplor_switch",
    "xplor_switch_derivative",
]
