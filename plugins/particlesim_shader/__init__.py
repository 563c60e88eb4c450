"""Shader's positional neuron layers (Shader, "Positional Neuron Layers").

Neurons get positions in R^D; a layer's effective weight is the free weight
times a falloff of the distance between the two neurons it joins,
``W_f = b(d)·w`` with ``b(d) = 1/(1 + d²)``. A distance-weighted penalty
``Σ w²·d²`` (this plugin's ``distance_l2`` potential,
:mod:`particlesim_shader.potentials`) plus the engine's plain L2 (``l2``)
make strong couplings cheap only between close neurons, so hidden neurons move
towards what they read from and what they drive. Registered as the model
``positional_mlp`` (see :mod:`particlesim_shader.model`)::

    [model]
    name = "positional_mlp"
    sizes = [784, 112, 56, 50, 50, 50, 10]
    positional = true          # false: the paper's "vanilla" dense network

    [[potentials]]
    name = "distance_l2"
    coefficient = 0.0417
    reduction = "mean"

The paper's experiments (generalisation over training-data fractions, and
test accuracy after whole-neuron pruning) are reproduced by
``python -m particlesim_shader.experiments all`` (or ``particlesim shader``);
results, plots and the comparison with the paper live in ``results/``.
Whole-neuron pruning itself is the engine's (:mod:`particlesim.analysis.pruning`,
``particlesim prune RUN_DIR``), usable on any network. ``particlesim reproduce
shader`` runs both experiments and states every point of the paper's figures
beside ours with a verdict (:mod:`particlesim_shader.reproduction`).
"""

from __future__ import annotations

from particlesim import hookimpl

__version__ = "0.1.0"


@hookimpl
def particlesim_register_models():
    from particlesim_shader.model import PositionalMLP

    return [PositionalMLP]


@hookimpl
def particlesim_register_potentials():
    from particlesim_shader.potentials import POTENTIALS

    return list(POTENTIALS)


@hookimpl
def particlesim_add_commands(app):
    from particlesim_shader.experiments import register_command

    register_command(app)


@hookimpl
def particlesim_register_reproductions():
    from particlesim_shader.reproduction import ShaderReproduction

    return [ShaderReproduction]
