"""Benchmark scripts: run each with the dev venv's python (see docs/benchmarks.md)."""
