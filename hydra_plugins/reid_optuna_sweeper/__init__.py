"""The project's Optuna sweeper for Hydra: `override hydra/sweeper: reid_optuna` (see docs/sweeps.md)."""
