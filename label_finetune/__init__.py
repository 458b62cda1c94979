"""SynthForge stage C: label fine-tuning on real benchmarks with a frozen stage-B network."""
