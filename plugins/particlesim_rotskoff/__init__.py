"""Rotskoff & Vanden-Eijnden's mean-field networks."""
