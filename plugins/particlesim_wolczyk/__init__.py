"""Wołczyk et al.'s spatial neural networks."""
