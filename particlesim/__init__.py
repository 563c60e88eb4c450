"""particlesim: neural networks as particle systems.

Each neuron is a particle with a position and charges; layers couple through
kernels of distance; the loss plus spatial costs is a potential energy; an
optimiser is an integrator. See README.md for a tour.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("particlesim")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

from particlesim.errors import ParticlesimError
from particlesim.plugins.hookspecs import hookimpl

__all__ = [
    "ParticlesimError",
    "RunResult",
    "Runner",
    "Simulation",
    "__version__",
    "hookimpl",
    "open_trajectory",
]


def __getattr__(name: str):
    """Lazy public names: torch, h5py and xarray load only when these are used."""
    if name == "open_trajectory":
        from particlesim.io.trajectory import open_trajectory

        return open_trajectory
    if name in ("Runner", "RunResult"):
        from particlesim import runner

        return getattr(runner, name)
    if name == "Simulation":
        from particlesim.core.simulation import Simulation

        return Simulation
    raise AttributeError(f"module 'particlesim' has no attribute {name!r}")
