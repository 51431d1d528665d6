"""Freehold benchmarks."""
