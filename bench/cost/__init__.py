"""cost benchmarks (bench/README.md)."""
