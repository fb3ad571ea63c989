"""data benchmarks (bench/README.md)."""
