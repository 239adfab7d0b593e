"""reid's side of Optuna sweeps: the plateau variants, reading a job's run record, the jobs' pruning hook.

The sweep loop itself is the Hydra plugin's (`hydra_plugins/reid_optuna_sweeper`); sweeps/plateau.yaml names
these callables by `_target_`.
"""
