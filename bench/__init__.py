"""Benchmarks (not installed): run by `make bench-merge` and `make bench-train`."""
