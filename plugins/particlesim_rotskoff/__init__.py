"""Rotskoff & Vanden-Eijnden's mean-field networks: parameters as interacting particles.

Rotskoff & Vanden-Eijnden (2018, arXiv:1805.00915) write a one-hidden-layer network as an
average over particles, ``f_n(x) = (1/n) Σ_i c_i h(a_i·x + b_i)``, train it by (stochastic)
gradient descent or Langevin dynamics on ``L = n·ℓ`` with ``ℓ = ½ E|f - f_n|²``, and show
that the approximation error heals from the ``n^{-1/2}`` of i.i.d. particles at
initialisation to ``n^{-1}`` after training.

The engine provides the general parts: the interactions ``mean_field_units`` and
``mean_field`` and the kernel ``dot_product`` (:mod:`particlesim.core.mean_field`), the
``langevin`` integrator with ``particles = n``, ``beta`` (temperature ``(βn)^{-1}``) and an
optional Gaussian reference measure, online data with ``[run] batch_schedule`` (the
paper's quench) and the observable ``effective_noise`` (``θ = Δt/P``). This plugin adds

* the data set ``spherical_3spin`` (:mod:`particlesim_rotskoff.spin`): the paper's target
  ``f(x) = (1/d) Σ a_pqr x_p x_q x_r`` on ``S^{d-1}(√d)``, online or with a fixed training
  set, scored by ``mse`` with scale ½;
* the model ``mean_field`` (:mod:`particlesim_rotskoff.model`)::

      [data]
      name = "spherical_3spin"
      dim = 25            # the paper's; the experiment uses 5

      [model]
      name = "mean_field"
      particles = 256

      [integrator]
      name = "langevin"
      lr = 1.0            # Δt
      particles = 256     # gradient descent on L = n·ℓ

* the scaling experiment, ``python -m particlesim_rotskoff.experiments scaling --out DIR``
  (or ``particlesim rotskoff scaling``; ``--dim 25`` for the paper's dimension): error
  against ``n`` at initialisation and after training, fitted slopes, the particles'
  distribution; results in ``results/`` (d = 5) and ``results/d25/``;
* the reproduction, ``particlesim reproduce rotskoff``: the fitted exponents with their
  confidence intervals beside the paper's, at d = 25 and d = 5
  (:mod:`particlesim_rotskoff.reproduction`).
"""

from __future__ import annotations

from particlesim import hookimpl

__version__ = "0.1.0"


@hookimpl
def particlesim_register_datasets():
    from particlesim_rotskoff.spin import DATASETS

    return list(DATASETS)


@hookimpl
def particlesim_register_models():
    from particlesim_rotskoff.model import MODELS

    return list(MODELS)


@hookimpl
def particlesim_register_reproductions():
    from particlesim_rotskoff.reproduction import RotskoffReproduction

    return [RotskoffReproduction]


@hookimpl
def particlesim_add_commands(app):
    from particlesim_rotskoff.experiments import register_command

    register_command(app)
