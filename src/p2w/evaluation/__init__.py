"""Benchmark evaluation: metrics in the published protocols (and, per benchmark, layout parsing)."""
