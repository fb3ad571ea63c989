"""quality benchmarks (bench/README.md)."""
