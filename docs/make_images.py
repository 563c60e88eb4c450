"""Regenerate the pictures in docs/ from the main scenario's run, with README's own commands.

    python docs/make_images.py

1. ``particlesim run scenarios/mnist_particle.toml`` when ``runs/mnist_particle/trajectory.h5``
   does not exist yet (about half a minute on a 2-core CPU);
2. ``docs/mnist_particle.png``: ``particlesim plot runs/mnist_particle/trajectory.h5 -o …``;
3. ``docs/mnist_particle_view.png``: ``particlesim view runs/mnist_particle/trajectory.h5``,
   then a screenshot of the page at its last frame, a hidden1 particle hovered, taken by
   headless Chromium (``pip install 'particlesim[browser]'`` and ``apt-get install chromium``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAJECTORY = Path("runs/mnist_particle/trajectory.h5")
VIEW = Path("runs/mnist_particle/view.html")


def particlesim(*args: str) -> None:
    """Run one ``particlesim`` command in the repository root, as README shows it."""
    command = [sys.executable, "-m", "particlesim", *args]
    print("$ particlesim " + " ".join(args), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    if not (ROOT / TRAJECTORY).exists():
        particlesim("run", "scenarios/mnist_particle.toml")
    particlesim("plot", str(TRAJECTORY), "-o", "docs/mnist_particle.png", "--dpi", "100")
    particlesim("view", str(TRAJECTORY), "-o", str(VIEW))
    from particlesim.analysis.view import screenshot

    out = screenshot(ROOT / VIEW, ROOT / "docs/mnist_particle_view.png", hover="hidden1")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
