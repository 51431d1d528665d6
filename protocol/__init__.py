"""Freehold protocol."""
