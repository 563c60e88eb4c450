"""Shader's positional neuron layers."""
