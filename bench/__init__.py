"""Benchmarks for llamafactory-attok; results and exact commands in BENCHMARKS.md."""
