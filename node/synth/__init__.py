"""Synthetic CT phantoms with known truth, for tests, benchmarks and demos (no patient data)."""
