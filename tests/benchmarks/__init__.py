"""Smoke tests of the benchmarks: they run and print well-formed figures."""
