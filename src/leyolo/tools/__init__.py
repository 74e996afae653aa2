"""Tools that compose the whole library: bench, ablate, quantize, prune, demo (each a CLI command)."""
