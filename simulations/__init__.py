"""Freehold simulations."""
