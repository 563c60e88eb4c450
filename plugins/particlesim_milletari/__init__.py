"""Milletari's ESP activation and Hessian-index experiments."""
