"""The PyTorch reference side: loading models (checkpoint, preset, embedded default) and the torch executor."""
