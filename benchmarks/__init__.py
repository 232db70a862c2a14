"""Benchmarks: scripts that time unetgraph against peers side by side in one process (medians, ratios)."""
