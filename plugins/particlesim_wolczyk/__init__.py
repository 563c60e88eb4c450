"""Wołczyk et al.'s spatial neural networks ("Biologically-Inspired Spatial Neural Networks").

Each neuron has a learnable position in the plane; a *transport* cost makes
long strong connections expensive and a *density* cost keeps the neurons of a
layer apart (:mod:`particlesim_wolczyk.costs`, registered as the potentials
``transport`` and ``density``). Trained on two tasks at once, the network's
last layers separate into one region per task, so that a greedy split
(:mod:`particlesim_wolczyk.split`) leaves each task's sub-network nearly as
accurate as the whole. Registered as the model ``spatial_mlp``
(:mod:`particlesim_wolczyk.model`); the two tasks come from the engine's
``multitask`` data set::

    [data]
    name = "multitask"
    mode = "concatenate"          # or "mix", "sequential"
    tasks = ["mnist", "fashion_mnist"]

    [model]
    name = "spatial_mlp"
    sizes = [0, 128, 128, 128, 256, 0]
    spatial = true                # false: the "Regular" baseline
    alpha = 1.0
    beta = 3.0

The loss ``pooled_head_cross_entropy`` (:mod:`particlesim_wolczyk.losses`) is the
authors' code's data loss, one cross-entropy mean over every labelled head, beside
the engine's ``multi_head_cross_entropy`` (a mean per head, summed).

``python -m particlesim_wolczyk.experiments table1`` (or ``particlesim wolczyk
table1``) reproduces the paper's Table 1; the results, figures and the
comparison with the paper live in ``results/``. ``particlesim reproduce wolczyk``
runs the grid that reproduces it best and states each cell of Table 1 beside
ours with a verdict (:mod:`particlesim_wolczyk.reproduction`).
"""

from __future__ import annotations

from particlesim import hookimpl

__version__ = "0.1.0"


@hookimpl
def particlesim_register_models():
    from particlesim_wolczyk.model import SpatialMLP

    return [SpatialMLP]


@hookimpl
def particlesim_register_potentials():
    from particlesim_wolczyk.costs import SPATIAL_COSTS

    return list(SPATIAL_COSTS)


@hookimpl
def particlesim_register_losses():
    from particlesim_wolczyk.losses import PooledHeadCrossEntropy

    return [PooledHeadCrossEntropy]


@hookimpl
def particlesim_add_commands(app):
    from particlesim_wolczyk.experiments import register_command

    register_command(app)


@hookimpl
def particlesim_register_reproductions():
    from particlesim_wolczyk.reproduction import WolczykReproduction

    return [WolczykReproduction]
