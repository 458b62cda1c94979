"""SynthForge stage A: labeled-face generation from a FLAME-format head model."""
