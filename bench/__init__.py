"""Benchmarks (see docs/benchmarks.md); each module runs as a script."""
