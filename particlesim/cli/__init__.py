"""The typer command-line application (``particlesim``)."""
