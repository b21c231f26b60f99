"""Benchmarks and load tests (scripts that print figures, with the machine described)."""
