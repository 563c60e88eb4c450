"""Input and output: metrics files, run directories (trajectories come here too)."""

from particlesim.io.metrics import MetricsWriter

__all__ = ["MetricsWriter"]
