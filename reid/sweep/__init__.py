"""Optuna sweeps over `reid.train`: search space, named variants, the sweep loop, the jobs' pruning hook."""
