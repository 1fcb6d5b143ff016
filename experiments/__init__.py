"""Evaluation programs that call the library (run as ``python -m experiments.exp_<name>``)."""
