"""Benchmark harnesses: each writes its results (JSON + Markdown) together with the command that made them."""
