"""Synthetic Spanish speech for tests, the demo and benchmarks: espeak-ng, Kokoro, Andalusian accent rules."""
