"""The engine's own extensions, registered through the same hooks as any plugin."""

from __future__ import annotations

from particlesim.plugins.hookspecs import hookimpl


@hookimpl
def particlesim_register_kernels():
    from particlesim.core.mean_field import MEAN_FIELD_KERNELS
    from particlesim.kernels.base import BUILTIN_KERNELS

    return [*BUILTIN_KERNELS, *MEAN_FIELD_KERNELS]


@hookimpl
def particlesim_register_interactions():
    from particlesim.core.interactions import BUILTIN_INTERACTIONS
    from particlesim.core.mean_field import MEAN_FIELD_INTERACTIONS

    return [*BUILTIN_INTERACTIONS, *MEAN_FIELD_INTERACTIONS]


@hookimpl
def particlesim_register_potentials():
    from particlesim.core.potentials import BUILTIN_POTENTIALS

    return list(BUILTIN_POTENTIALS)


@hookimpl
def particlesim_register_integrators():
    from particlesim.core.integrators import BUILTIN_INTEGRATORS

    return list(BUILTIN_INTEGRATORS)


@hookimpl
def particlesim_register_moves():
    from particlesim.core.moves import BUILTIN_MOVES

    return list(BUILTIN_MOVES)


@hookimpl
def particlesim_register_datasets():
    from particlesim.data.datasets import BUILTIN_DATASETS
    from particlesim.data.multitask import MultiTask

    return [*BUILTIN_DATASETS, MultiTask]


@hookimpl
def particlesim_register_writers():
    from particlesim.core.writers import MemoryWriter
    from particlesim.io.h5md import TrajectoryWriter
    from particlesim.io.metrics import MetricsWriter

    return [MetricsWriter, MemoryWriter, TrajectoryWriter]


@hookimpl
def particlesim_register_activations():
    from particlesim.core.activations import BUILTIN_ACTIVATIONS

    return list(BUILTIN_ACTIVATIONS)


@hookimpl
def particlesim_register_models():
    from particlesim.core.model import BUILTIN_MODELS

    return list(BUILTIN_MODELS)


@hookimpl
def particlesim_register_losses():
    from particlesim.core.losses import BUILTIN_LOSSES

    return list(BUILTIN_LOSSES)


@hookimpl
def particlesim_register_observables():
    from particlesim.core.hessian import HESSIAN_OBSERVABLES
    from particlesim.core.mean_field import MEAN_FIELD_OBSERVABLES

    return [*HESSIAN_OBSERVABLES, *MEAN_FIELD_OBSERVABLES]
