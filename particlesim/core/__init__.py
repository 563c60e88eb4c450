"""The engine's core: groups, interactions, system, potentials, integrators, observables.

Plain torch: nothing here does file I/O or imports the CLI, io or analysis.
"""

from particlesim.core.activations import Activation
from particlesim.core.device import resolve_device, resolve_dtype
from particlesim.core.group import ParticleGroup
from particlesim.core.integrators import (
    SGD,
    SGHMC,
    Adam,
    AdamW,
    Integrator,
    OverdampedLangevin,
    UnderdampedLangevin,
)
from particlesim.core.interactions import (
    DenseInteraction,
    Interaction,
    KernelInteraction,
    ModulatedInteraction,
)
from particlesim.core.observables import FunctionObservable, Observable
from particlesim.core.potentials import L2Potential, Potential
from particlesim.core.schedules import Constant, Cosine, Ramp, Schedule
from particlesim.core.simulation import RunResult, Simulation
from particlesim.core.system import System
from particlesim.core.triggers import And, At, OnEpoch, Or, Periodic, Trigger
from particlesim.core.writers import MemoryWriter, Request, Writer

__all__ = [
    "SGD",
    "SGHMC",
    "Activation",
    "Adam",
    "AdamW",
    "And",
    "At",
    "Constant",
    "Cosine",
    "DenseInteraction",
    "FunctionObservable",
    "Integrator",
    "Interaction",
    "KernelInteraction",
    "L2Potential",
    "MemoryWriter",
    "ModulatedInteraction",
    "Observable",
    "OnEpoch",
    "Or",
    "OverdampedLangevin",
    "ParticleGroup",
    "Periodic",
    "Potential",
    "Ramp",
    "Request",
    "RunResult",
    "Schedule",
    "Simulation",
    "System",
    "Trigger",
    "UnderdampedLangevin",
    "Writer",
    "resolve_device",
    "resolve_dtype",
]
