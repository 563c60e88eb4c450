"""Milletari's expected signal propagation (ESP) and the index of critical points.

Milletari, Chotibut & Trevisanutto (2018, arXiv:1805.08786) derive the activation
``a·σ(β a)`` as the expected output of a unit whose gate is a two-state (Ising)
variable at inverse temperature β ("Expected Signal Propagation"), and characterise
training by the Hessian of the loss: the fraction α of negative eigenvalues and the
fraction γ of zero eigenvalues at the points training passes through.

This plugin adds the paper's activation, ``esp`` (one learnable β per layer) and
``esp_per_neuron`` (one per neuron, recorded as the group's ``beta`` field), with the
observable ``activation_beta`` (:mod:`particlesim_milletari.activations`); the paper's
2-D binary classification data sets (``linear_2d``, ``moons_2d``, ``circles_2d``; one
output, ``binary_cross_entropy``); and the experiments. The Hessian observables
``hessian_alpha``, ``hessian_gamma``, ``hessian_spectrum``, … are the engine's
(:mod:`particlesim.core.hessian`, dense or stochastic Lanczos), usable on any network::

    [data]
    name = "moons_2d"

    [model]
    name = "mlp"
    sizes = [2, 8, 2, 1]
    activation = "esp"

    [[observables]]
    name = "hessian_alpha"

``python -m particlesim_milletari.experiments toy|mnist|all`` (or
``particlesim milletari …``) reproduces the comparisons of ESP with ReLU, sigmoid,
tanh and swish; tables, plots and the paper's statements side by side are in
``results/``. ``particlesim reproduce milletari`` runs the same grids and states each of
the slides' findings beside ours with a verdict (:mod:`particlesim_milletari.reproduction`).
"""

from __future__ import annotations

from particlesim import hookimpl

__version__ = "0.1.0"


@hookimpl
def particlesim_register_activations():
    from particlesim_milletari.activations import ACTIVATIONS

    return list(ACTIVATIONS)


@hookimpl
def particlesim_register_observables():
    from particlesim_milletari.activations import OBSERVABLES

    return list(OBSERVABLES)


@hookimpl
def particlesim_register_datasets():
    from particlesim_milletari.datasets import DATASETS

    return list(DATASETS)


@hookimpl
def particlesim_register_reproductions():
    from particlesim_milletari.reproduction import MilletariReproduction

    return [MilletariReproduction]


@hookimpl
def particlesim_add_commands(app):
    from particlesim_milletari.experiments import register_command

    register_command(app)
