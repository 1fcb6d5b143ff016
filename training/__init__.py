"""Training and evaluation: benchmark datasets, baselines, the eval harness, fast-tier training."""
