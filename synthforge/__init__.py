"""SynthForge stage B: multi-task face network trained on synthetic data."""
