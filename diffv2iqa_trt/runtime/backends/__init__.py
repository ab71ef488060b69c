"""Executors. Each imports its framework lazily so that the runtime core stays NumPy-only."""
