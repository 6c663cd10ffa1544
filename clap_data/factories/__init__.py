"""Synthetic datasets written in the exact on-disk formats of real sources, for tests and benchmarks."""
