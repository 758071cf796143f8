"""Sweeps: one job that survives re-runs and failures, one GPU per job, the Hydra callbacks
that check the run directory first and report at the end."""
