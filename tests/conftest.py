"""Shared fixtures: a tiny generated IDX data set and scenario files that use it.

The tests load only the plugins they name: ``PARTICLESIM_PLUGINS`` is set to the built-in
plugins (this distribution's own entry points) for the whole session, so a third-party
``particlesim`` plugin installed in the environment, broken or not, changes no test.
Subprocesses inherit it. A test that needs another plugin loads it by file or sets the
variable itself.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest

from particlesim.data.idx import write_idx

#: The built-in plugins: the entry points this distribution declares.
BUILTIN_PLUGINS = ",".join(
    sorted(
        ep.name
        for ep in importlib.metadata.distribution("particlesim").entry_points
        if ep.group == "particlesim"
    )
)
os.environ["PARTICLESIM_PLUGINS"] = BUILTIN_PLUGINS

SIDE = 4  # images are SIDE x SIDE
CLASSES = 3


def make_tiny_idx(folder: Path, n_train: int = 96, n_test: int = 30, seed: int = 0) -> Path:
    """Write a learnable 3-class IDX data set: class c lights up row block c."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % CLASSES).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, SIDE, SIDE)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, label, :] = 200 + rng.integers(0, 55, size=SIDE)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a tiny IDX data set (16 features, 3 classes)."""
    return make_tiny_idx(tmp_path_factory.mktemp("tiny_idx"))


TINY_SCENARIO = """
[scenario]
name = "tiny"
seed = 3
device = "cpu"
dtype = "float32"

[data]
name = "idx"
data_dir = "{data_dir}"

[model]
name = "particle_network"
sizes = [0, 8, 0]
dim = 2

[integrator]
name = "adam"
lr = 0.05

[run]
epochs = 2
batch_size = 16
"""


@pytest.fixture
def tiny_scenario(tmp_path: Path, tiny_data: Path) -> Path:
    """A scenario file training a small particle network on the tiny data set."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SCENARIO.format(data_dir=tiny_data), encoding="utf-8")
    return path
