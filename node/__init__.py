"""Freehold node."""
