"""Real peers and real data the suite and the benchmarks share (bench/ may import these on purpose)."""
